#!/usr/bin/env python3
"""Writes fuzz/corpus-seed/<target>/ from the captures in proto/tests/data/.

Each entry in fuzz/entries/ reads its input in its own format (a few header bytes, then
payload); this script wraps real captures in those formats and adds hand-made inputs that reach
deep states (a whole publish and play conversation, AMF3 references, interleaved chunk streams).
The output is committed; rerun after changing an entry's input format:

    python3 fuzz/make_seeds.py
"""

import os
import random
import shutil
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(ROOT, "..", "proto", "tests", "data")
OUT = os.path.join(ROOT, "corpus-seed")


def data(name):
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read()


def u16(v):
    return struct.pack(">H", v)


def u32(v):
    return struct.pack(">I", v)


def write(target, name, payload):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(payload)


def sized(b, max_len):
    """`Input::bytes(max)`: a u16 length taken modulo max + 1, then the bytes."""
    assert len(b) <= max_len
    return u16(len(b)) + b


# --- handshake: [mode] [schedule] [bytes] -------------------------------------------------------
def handshake():
    rng = random.Random(7)
    c2 = bytes(rng.randrange(256) for _ in range(1536))
    publish = data("handshake_ffmpeg_publish_c0c1.bin")
    play = data("handshake_ffmpeg_play_c0c1.bin")
    write("handshake", "ffmpeg_publish_whole", b"\x00\x00" + publish + c2 + b"\x02\x00\x00")
    write("handshake", "ffmpeg_play_pieces", b"\x00\x03\x01\x20\xff" + play + c2)
    write("handshake", "ffmpeg_c0c1_only", b"\x00\x00" + publish)
    write("handshake", "bad_version", b"\x00\x00\x06" + publish[1:64])
    randoms = bytes(rng.randrange(256) for _ in range(3072))
    write("handshake", "client_plain", b"\x01\x00" + randoms)
    write("handshake", "client_digest", b"\x03\x00" + randoms)


# --- chunk_decoder: [max_len: u16] [streams: u8] [partial: u16] [schedule] [bytes] ---------------
def chunk_decoder():
    connect = data("ffmpeg_connect_chunks.bin")
    publish = data("session_ffmpeg_publish.bin")[3073:3073 + 12000]
    default = u16(0xFFFF) + b"\x10" + u16(0xFFFF)
    write("chunk_decoder", "ffmpeg_connect", default + b"\x00" + connect)
    write("chunk_decoder", "ffmpeg_publish_pieces", default + b"\x04\x01\x07\x10\x40" + publish)
    write("chunk_decoder", "ffmpeg_publish_whole", default + b"\x00" + publish[:4000])
    write("chunk_decoder", "tight_limits", u16(0x80) + b"\x02" + u16(0x40) + b"\x00" + connect)
    # Set Chunk Size 1, then a message in one-byte chunks; an Abort; extended timestamps.
    scs = b"\x02" + b"\x00\x00\x00" + b"\x00\x00\x04" + b"\x01" + b"\x00" * 4 + u32(1)
    msg = b"\x04\xff\xff\xff\x00\x00\x03\x08\x01\x00\x00\x00" + u32(0x01000000) + b"a"
    msg += b"\xc4" + u32(0x01000000) + b"b" + b"\xc4" + u32(0x01000000) + b"c"
    abort = b"\x02\x00\x00\x00\x00\x00\x04\x02\x00\x00\x00\x00" + b"\x00" + b"\xc2\x00" + b"\xc2\x00\xc2\x04"
    write("chunk_decoder", "set_chunk_size_extended", default + b"\x00" + scs + msg + abort)


# --- chunk_roundtrip: [schedule] {[size choice] [count] {message}} ------------------------------
def roundtrip_message(csid_choice, type_id, ts, stream_id, length, pattern):
    return bytes([csid_choice, type_id]) + u32(ts) + u32(stream_id) + u16(length) + sized(pattern, 64)


def chunk_roundtrip():
    pat = b"0123456789abcdef"
    seg1 = b"\x00\x03"  # chunk size 128, three messages
    seg1 += roundtrip_message(1, 20, 0, 0, 300, pat)  # csid 3
    seg1 += roundtrip_message(4, 8, 0x01000000, 1, 1000, pat)  # csid 6, extended
    seg1 += roundtrip_message(5, 9, 40, 1, 2500, pat)  # csid 7
    seg1 += bytes([0, 1, 2, 1, 2, 1, 2, 1, 2, 1, 0, 1, 2] * 4)  # interleaving choices
    write("chunk_roundtrip", "three_streams_interleaved", b"\x00" + seg1)
    seg2 = b"\x01\x00\x02"  # chunk size 1, two messages
    seg2 += roundtrip_message(7, 18, 0xFFFFFF, 0, 20, b"xy")  # csid 64
    seg2 += roundtrip_message(10, 9, 7, 0xFFFFFFFF, 33, b"z")  # csid 65599
    seg2 += bytes([0, 1] * 60)
    seg3 = b"\x04" + u32(0x7FFFFFFF) + b"\x02"
    seg3 += roundtrip_message(9, 8, 1, 1, 4096, pat) + roundtrip_message(9, 8, 2, 1, 0, b"")
    write("chunk_roundtrip", "chunk_sizes_and_csids", b"\x02\x05\x30" + seg2 + seg3)
    seg4 = b"\x03\x08" + b"".join(
        roundtrip_message(i, 1 + i, i * 1000, i % 2, 100 * i, pat[: i + 1]) for i in range(8)
    )
    write("chunk_roundtrip", "eight_messages_4096", b"\x00" + seg4 + bytes(range(64)))


# --- amf0 / amf3: [flags] [limits if flags & 1] [bytes] -----------------------------------------
def amf3_u29(v):
    if v < 0x80:
        return bytes([v])
    if v < 0x4000:
        return bytes([(v >> 7) | 0x80, v & 0x7F])
    if v < 0x200000:
        return bytes([(v >> 14) | 0x80, ((v >> 7) & 0x7F) | 0x80, v & 0x7F])
    return bytes([(v >> 22) | 0x80, ((v >> 15) & 0x7F) | 0x80, ((v >> 8) & 0x7F) | 0x80, v & 0xFF])


def amf3_str(s):
    b = s.encode()
    return amf3_u29(len(b) << 1 | 1) + b


def amf3_samples():
    samples = {}
    # A dynamic anonymous object with nested values and references to strings and objects.
    inner = b"\x0a\x0b\x01" + amf3_str("w") + b"\x04" + amf3_u29(1280) + amf3_str("h") + b"\x04\x7f\x01"
    obj = b"\x0a\x0b\x01" + amf3_str("size") + inner
    obj += amf3_str("again") + b"\x0a" + amf3_u29(1 << 1)  # reference to object 1 (inner)
    obj += amf3_str("name") + b"\x06" + amf3_u29(0 << 1)  # reference to string 0 ("w")
    obj += b"\x01"
    samples["dynamic_object_refs"] = obj
    # Sealed traits with a class name, then an object reusing the traits by reference.
    sealed = b"\x09\x05\x01"  # array, 2 dense, no assoc
    sealed += b"\x0a\x23" + amf3_str("Point") + amf3_str("x") + amf3_str("y") + b"\x04\x01\x04\x02"
    sealed += b"\x0a\x01" + b"\x04\x03\x04\x04"  # traits reference 0
    samples["sealed_traits_ref"] = sealed
    # An associative and dense array, dates, XML, byte array, integers, doubles.
    arr = b"\x09\x07" + amf3_str("k") + b"\x05" + struct.pack(">d", 1.5) + b"\x01"
    arr += b"\x08\x01" + struct.pack(">d", 1.7e12)
    arr += b"\x0b" + amf3_u29(5 << 1 | 1) + b"<a/>!"
    arr += b"\x0c" + amf3_u29(3 << 1 | 1) + b"\x00\x01\x02"
    samples["array_mixed"] = arr
    samples["integers"] = b"\x09\x09\x01" + b"\x04\xff\xff\xff\xff" + b"\x04\x00" + b"\x04\xbf\xff\xff\xff" + b"\x03"
    samples["string_ref_chain"] = b"\x09\x07\x01" + b"\x06" + amf3_str("abc") + b"\x06\x00" + b"\x07" + amf3_str("<x/>")
    return samples


def amf0_samples():
    def s(text):
        b = text.encode()
        return b"\x02" + u16(len(b)) + b

    def key(text):
        b = text.encode()
        return u16(len(b)) + b

    samples = {}
    samples["ffmpeg_setdataframe"] = data("amf0_ffmpeg_setdataframe.bin")
    samples["ffmpeg_connect"] = data("ffmpeg_connect_amf0.bin")
    # ECMA array missing its end marker at the end of the input, as some encoders send.
    samples["ecma_unterminated"] = s("onMetaData") + b"\x08" + u32(9) + key("width") + b"\x00" + struct.pack(">d", 1280)
    typed = b"\x10" + key("flash.Point") + key("x") + b"\x00" + struct.pack(">d", 1) + b"\x00\x00\x09"
    strict = b"\x0a" + u32(3) + b"\x05\x06" + b"\x0b" + struct.pack(">d", 1.7e12) + u16(0)
    long = b"\x0c" + u32(4) + b"long" + b"\x0f" + u32(4) + b"<x/>" + b"\x07" + u16(1) + b"\x0d"
    samples["typed_strict_long"] = typed + strict + long
    avm = s("call") + b"\x00" + struct.pack(">d", 3) + b"\x11" + amf3_samples()["dynamic_object_refs"]
    avm += b"\x11\x06\x00"  # a later switch refers to the first's string table
    samples["avmplus_shared_tables"] = avm
    samples["nested"] = b"\x03" + key("a") + b"\x03" + key("b") + b"\x0a" + u32(1) + b"\x08" + u32(0) + b"\x00\x00\x09" + b"\x00\x00\x09" + b"\x00\x00\x09"
    return samples


def amf():
    tight = b"\x01\x04" + u16(0x0100) + u16(0x0020)
    for name, body in amf0_samples().items():
        write("amf0", name, b"\x00" + body)
    write("amf0", "ffmpeg_connect_tight", tight + data("ffmpeg_connect_amf0.bin"))
    for name, body in amf3_samples().items():
        write("amf3", name, b"\x00" + body)
    write("amf3", "dynamic_object_refs_tight", tight + amf3_samples()["dynamic_object_refs"])


# --- media: the payload itself -------------------------------------------------------------------
def media():
    for name in sorted(os.listdir(DATA)):
        if name.startswith("media_"):
            write("media", name[len("media_"):-len(".bin")], data(name))


# --- session_server: [flags] [decisions] [limits if flags & 4] [schedule] ... -------------------
class Script:
    """Builds the operation stream of session_server's scripted mode."""

    def __init__(self):
        self.b = b""

    def op(self, n):
        self.b += bytes([n])
        return self

    def connect(self, app):
        return self.op(0).raw(sized(app.encode(), 24))

    def create(self):
        return self.op(1)

    def publish(self, sid, name):
        return self.op(2).raw(bytes([sid]) + sized(name.encode(), 24))

    def play(self, sid, name):
        return self.op(3).raw(bytes([sid]) + sized(name.encode(), 24))

    def delete(self, sid):
        return self.op(4).raw(bytes([sid]))

    def media(self, sid, kind, ts, payload):
        return self.op(5).raw(bytes([sid, kind]) + u32(ts) + sized(payload, 512))

    def metadata(self, sid):
        # An object (value 7, then `bool` true) with width and app keys.
        value = b"\x07\x02" + b"\x01" + b"\x03" + u32(1280) + b"\x00" + b"\x05" + sized(b"live", 24) + b"\x01"
        return self.op(7).raw(bytes([sid]) + value)

    def chunk_size(self, size):
        return self.op(8).raw(b"\x03" + u32(size))

    def command(self, name_index, sid, amf3=False, tid=1):
        # tid choice 1 (a small integer), a null object, no arguments, no truncation.
        return self.op(9).raw(bytes([name_index, 1, tid, 0, 0, 0, 1 if amf3 else 0, sid]))

    def message(self, type_id, csid, sid, payload):
        return self.op(12).raw(bytes([type_id, csid, sid]) + u32(0) + sized(payload, 64))

    def aggregate(self, sid, tags):
        self.op(14).raw(bytes([sid, len(tags) - 1]))
        for kind, body in tags:
            self.raw(bytes([kind]) + sized(body, 64) + u32(40) + b"\x00")
        return self.raw(b"\x00" + u32(40))

    def raw(self, b):
        self.b += b
        return self


def session_server():
    publish = data("session_ffmpeg_publish.bin")
    connect = data("session_ffmpeg_connect.bin")
    write("session_server", "raw_ffmpeg_publish", b"\x00\xff\x00" + publish[:12000])
    write("session_server", "raw_ffmpeg_connect", b"\x02\xff\x00" + connect)
    write("session_server", "raw_ffmpeg_connect_pieces", b"\x02\xff\x03\x01\x20\xff" + connect)

    video_seq = data("media_h264_high_720p_aac_video_seq.bin")
    audio_seq = data("media_h264_high_720p_aac_audio_seq.bin")
    key = data("media_h264_high_720p_aac_video_key.bin")
    inter = data("media_h264_high_720p_aac_video_inter.bin")
    publisher = (
        Script()
        .connect("live").command(6, 0).command(7, 0)  # releaseStream, FCPublish
        .create().publish(6, "key?token=1")
        .chunk_size(4096).metadata(6)
        .media(6, 1, 0, video_seq).media(6, 0, 0, audio_seq).media(6, 1, 0, key)
        .aggregate(6, [(1, inter), (0, audio_seq[:4])])
        .message(4, 2, 0, b"\x00\x06" + u32(99))  # ping request
        .message(5, 2, 0, u32(1000))  # window ack size
        .command(8, 0)  # FCUnpublish
        .delete(6)
    )
    write("session_server", "scripted_publish", b"\x01\xff\x00" + publisher.b)
    player = (
        Script()
        .connect("live").create().command(14, 0).play(6, "key")
        .command(10, 6).command(12, 6, amf3=True).command(5, 6)  # pause, receiveAudio, closeStream
        .play(7, "other").command(200, 0).delete(6)
    )
    write("session_server", "scripted_play_digest", b"\x03\xfe\x03\x01\x40\xff" + player.b)
    rejected = Script().connect("live").create().publish(6, "taken").create().play(6, "x").create().create()
    limits = u16(0x200) + b"\x03" + u16(0x400) + b"\x03\x40\x20" + u16(0x80) + u16(0x100) + b"\x02"
    write("session_server", "scripted_small_limits", b"\x05\x00" + limits + b"\x00" + rejected.b)


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    handshake()
    chunk_decoder()
    chunk_roundtrip()
    amf()
    media()
    session_server()


if __name__ == "__main__":
    main()
