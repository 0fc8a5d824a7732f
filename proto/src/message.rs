//! Typed RTMP messages by type id (RTMP spec 1.0, sections 5.4 and 7.1).
//!
//! Protocol control and user control messages are small fixed layouts decoded into
//! [`ControlMessage`]; commands and data are AMF and go through [`crate::command`]; audio,
//! video and data payloads the relay forwards stay as shared [`Bytes`] and are never decoded
//! here beyond what routing needs.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::chunk::{MessageHeader, RawMessage};
use crate::time::RtmpTimestamp;

/// Message type ids.
pub mod type_id {
    pub const SET_CHUNK_SIZE: u8 = 1;
    pub const ABORT: u8 = 2;
    pub const ACKNOWLEDGEMENT: u8 = 3;
    pub const USER_CONTROL: u8 = 4;
    pub const WINDOW_ACK_SIZE: u8 = 5;
    pub const SET_PEER_BANDWIDTH: u8 = 6;
    pub const AUDIO: u8 = 8;
    pub const VIDEO: u8 = 9;
    pub const DATA_AMF3: u8 = 15;
    pub const SHARED_OBJECT_AMF3: u8 = 16;
    pub const COMMAND_AMF3: u8 = 17;
    pub const DATA_AMF0: u8 = 18;
    pub const SHARED_OBJECT_AMF0: u8 = 19;
    pub const COMMAND_AMF0: u8 = 20;
    pub const AGGREGATE: u8 = 22;
}

/// Conventional chunk stream ids. Any id works on the wire; these are the ones nginx-rtmp
/// uses, which keeps captures easy to compare.
pub mod csid {
    /// Protocol control and user control messages (the spec requires 2).
    pub const CONTROL: u32 = 2;
    /// Commands and the server's own data messages.
    pub const COMMAND: u32 = 3;
    /// Relayed data messages (onMetaData and friends).
    pub const DATA: u32 = 5;
    pub const AUDIO: u32 = 6;
    pub const VIDEO: u32 = 7;
}

/// User control event types (spec 7.1.7).
pub mod event_type {
    pub const STREAM_BEGIN: u16 = 0;
    pub const STREAM_EOF: u16 = 1;
    pub const STREAM_DRY: u16 = 2;
    pub const SET_BUFFER_LENGTH: u16 = 3;
    pub const STREAM_IS_RECORDED: u16 = 4;
    pub const PING_REQUEST: u16 = 6;
    pub const PING_RESPONSE: u16 = 7;
}

/// A User Control event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserControlEvent {
    StreamBegin(u32),
    StreamEof(u32),
    StreamDry(u32),
    SetBufferLength {
        stream_id: u32,
        millis: u32,
    },
    StreamIsRecorded(u32),
    PingRequest(u32),
    PingResponse(u32),
    /// An event type we do not interpret (e.g. Flash's SWF verification, 26/27), kept as-is.
    Other {
        event_type: u16,
        data: Bytes,
    },
}

/// Set Peer Bandwidth limit type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BandwidthLimit {
    Hard = 0,
    Soft = 1,
    Dynamic = 2,
}

/// Protocol control messages and user control events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    SetChunkSize(u32),
    Abort { csid: u32 },
    Acknowledgement { sequence_number: u32 },
    WindowAckSize(u32),
    SetPeerBandwidth { size: u32, limit: BandwidthLimit },
    UserControl(UserControlEvent),
}

/// A control message too short for its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortMessage {
    pub type_id: u8,
    pub len: usize,
}

impl std::fmt::Display for ShortMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "control message type {} too short ({} bytes)", self.type_id, self.len)
    }
}

impl std::error::Error for ShortMessage {}

impl ControlMessage {
    /// Decodes a protocol control (types 1-6) message; `Ok(None)` for other types.
    pub fn decode(type_id: u8, payload: &[u8]) -> Result<Option<ControlMessage>, ShortMessage> {
        let short = || ShortMessage { type_id, len: payload.len() };
        let mut buf = payload;
        let u32_at = |buf: &mut &[u8]| if buf.len() >= 4 { Some(buf.get_u32()) } else { None };
        let message = match type_id {
            type_id::SET_CHUNK_SIZE => {
                ControlMessage::SetChunkSize(u32_at(&mut buf).ok_or_else(short)? & 0x7fff_ffff)
            }
            type_id::ABORT => ControlMessage::Abort { csid: u32_at(&mut buf).ok_or_else(short)? },
            type_id::ACKNOWLEDGEMENT => ControlMessage::Acknowledgement {
                sequence_number: u32_at(&mut buf).ok_or_else(short)?,
            },
            type_id::WINDOW_ACK_SIZE => {
                ControlMessage::WindowAckSize(u32_at(&mut buf).ok_or_else(short)?)
            }
            type_id::SET_PEER_BANDWIDTH => {
                let size = u32_at(&mut buf).ok_or_else(short)?;
                let limit = match buf.first().ok_or_else(short)? {
                    0 => BandwidthLimit::Hard,
                    1 => BandwidthLimit::Soft,
                    _ => BandwidthLimit::Dynamic,
                };
                ControlMessage::SetPeerBandwidth { size, limit }
            }
            type_id::USER_CONTROL => {
                if buf.len() < 2 {
                    return Err(short());
                }
                let event = buf.get_u16();
                let mut value = || u32_at(&mut buf).ok_or_else(short);
                ControlMessage::UserControl(match event {
                    event_type::STREAM_BEGIN => UserControlEvent::StreamBegin(value()?),
                    event_type::STREAM_EOF => UserControlEvent::StreamEof(value()?),
                    event_type::STREAM_DRY => UserControlEvent::StreamDry(value()?),
                    event_type::SET_BUFFER_LENGTH => {
                        UserControlEvent::SetBufferLength { stream_id: value()?, millis: value()? }
                    }
                    event_type::STREAM_IS_RECORDED => UserControlEvent::StreamIsRecorded(value()?),
                    event_type::PING_REQUEST => UserControlEvent::PingRequest(value()?),
                    event_type::PING_RESPONSE => UserControlEvent::PingResponse(value()?),
                    other => UserControlEvent::Other {
                        event_type: other,
                        data: Bytes::copy_from_slice(buf),
                    },
                })
            }
            _ => return Ok(None),
        };
        Ok(Some(message))
    }

    pub fn type_id(&self) -> u8 {
        match self {
            ControlMessage::SetChunkSize(_) => type_id::SET_CHUNK_SIZE,
            ControlMessage::Abort { .. } => type_id::ABORT,
            ControlMessage::Acknowledgement { .. } => type_id::ACKNOWLEDGEMENT,
            ControlMessage::WindowAckSize(_) => type_id::WINDOW_ACK_SIZE,
            ControlMessage::SetPeerBandwidth { .. } => type_id::SET_PEER_BANDWIDTH,
            ControlMessage::UserControl(_) => type_id::USER_CONTROL,
        }
    }

    /// Writes the message body.
    pub fn encode_payload(&self, out: &mut BytesMut) {
        match self {
            ControlMessage::SetChunkSize(v) => out.put_u32(*v & 0x7fff_ffff),
            ControlMessage::Abort { csid } => out.put_u32(*csid),
            ControlMessage::Acknowledgement { sequence_number } => out.put_u32(*sequence_number),
            ControlMessage::WindowAckSize(v) => out.put_u32(*v),
            ControlMessage::SetPeerBandwidth { size, limit } => {
                out.put_u32(*size);
                out.put_u8(*limit as u8);
            }
            ControlMessage::UserControl(event) => {
                let (kind, values): (u16, &[u32]) = match event {
                    UserControlEvent::StreamBegin(id) => (event_type::STREAM_BEGIN, &[*id]),
                    UserControlEvent::StreamEof(id) => (event_type::STREAM_EOF, &[*id]),
                    UserControlEvent::StreamDry(id) => (event_type::STREAM_DRY, &[*id]),
                    UserControlEvent::SetBufferLength { stream_id, millis } => {
                        out.put_u16(event_type::SET_BUFFER_LENGTH);
                        out.put_u32(*stream_id);
                        out.put_u32(*millis);
                        return;
                    }
                    UserControlEvent::StreamIsRecorded(id) => {
                        (event_type::STREAM_IS_RECORDED, &[*id])
                    }
                    UserControlEvent::PingRequest(t) => (event_type::PING_REQUEST, &[*t]),
                    UserControlEvent::PingResponse(t) => (event_type::PING_RESPONSE, &[*t]),
                    UserControlEvent::Other { event_type, data } => {
                        out.put_u16(*event_type);
                        out.extend_from_slice(data);
                        return;
                    }
                };
                out.put_u16(kind);
                for v in values {
                    out.put_u32(*v);
                }
            }
        }
    }
}

/// Why an aggregate message could not be split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAggregate(pub &'static str);

impl std::fmt::Display for BadAggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed aggregate message: {}", self.0)
    }
}

impl std::error::Error for BadAggregate {}

/// Splits an aggregate message (type 22) into its sub-messages.
///
/// The body is a run of FLV tags (type, 24-bit size, 24+8-bit timestamp, 24-bit stream id,
/// body, 32-bit back pointer). Sub-message timestamps are rebased so the first one lands on the
/// aggregate's own timestamp, as FMS and ffmpeg do. Sub-message bodies are slices of the
/// aggregate's payload: no copy.
pub fn split_aggregate(message: &RawMessage) -> Result<Vec<RawMessage>, BadAggregate> {
    let payload = &message.payload;
    let mut pos = 0usize;
    let mut first_timestamp = None;
    let mut out = Vec::new();
    while pos < payload.len() {
        let tag = payload.get(pos..pos + 11).ok_or(BadAggregate("truncated tag header"))?;
        let type_id = tag[0];
        let size = (u32::from(tag[1]) << 16 | u32::from(tag[2]) << 8 | u32::from(tag[3])) as usize;
        let timestamp = u32::from(tag[7]) << 24
            | u32::from(tag[4]) << 16
            | u32::from(tag[5]) << 8
            | u32::from(tag[6]);
        let body_start = pos + 11;
        let body_end = body_start.checked_add(size).ok_or(BadAggregate("size overflow"))?;
        if body_end > payload.len() {
            return Err(BadAggregate("tag body past the end"));
        }
        let first = *first_timestamp.get_or_insert(timestamp);
        out.push(RawMessage {
            csid: message.csid,
            header: MessageHeader {
                timestamp: RtmpTimestamp(
                    message.header.timestamp.0.wrapping_add(timestamp.wrapping_sub(first)),
                ),
                type_id,
                stream_id: message.header.stream_id,
            },
            payload: payload.slice(body_start..body_end),
        });
        // The 4-byte back pointer is optional after the last tag in some writers.
        pos = (body_end + 4).min(payload.len());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip_golden() {
        let cases: Vec<(ControlMessage, Vec<u8>)> = vec![
            (ControlMessage::SetChunkSize(4096), vec![0, 0, 0x10, 0]),
            (ControlMessage::Abort { csid: 6 }, vec![0, 0, 0, 6]),
            (ControlMessage::Acknowledgement { sequence_number: 0x01020304 }, vec![1, 2, 3, 4]),
            (ControlMessage::WindowAckSize(2_500_000), vec![0, 0x26, 0x25, 0xa0]),
            (
                ControlMessage::SetPeerBandwidth {
                    size: 2_500_000,
                    limit: BandwidthLimit::Dynamic,
                },
                vec![0, 0x26, 0x25, 0xa0, 2],
            ),
            (ControlMessage::UserControl(UserControlEvent::StreamBegin(1)), vec![0, 0, 0, 0, 0, 1]),
            (ControlMessage::UserControl(UserControlEvent::StreamEof(1)), vec![0, 1, 0, 0, 0, 1]),
            (
                ControlMessage::UserControl(UserControlEvent::SetBufferLength {
                    stream_id: 1,
                    millis: 3000,
                }),
                vec![0, 3, 0, 0, 0, 1, 0, 0, 0x0b, 0xb8],
            ),
            (
                ControlMessage::UserControl(UserControlEvent::PingRequest(77)),
                vec![0, 6, 0, 0, 0, 77],
            ),
        ];
        for (message, bytes) in cases {
            let mut out = BytesMut::new();
            message.encode_payload(&mut out);
            assert_eq!(&out[..], &bytes[..], "{message:?}");
            assert_eq!(
                ControlMessage::decode(message.type_id(), &bytes),
                Ok(Some(message.clone()))
            );
            for cut in 0..bytes.len() {
                let decoded = ControlMessage::decode(message.type_id(), &bytes[..cut]);
                assert!(decoded.is_err(), "prefix {cut} of {message:?} gave {decoded:?}");
            }
        }
    }

    #[test]
    fn set_chunk_size_ignores_reserved_top_bit() {
        assert_eq!(
            ControlMessage::decode(type_id::SET_CHUNK_SIZE, &[0x80, 0, 0x10, 0]),
            Ok(Some(ControlMessage::SetChunkSize(4096)))
        );
    }

    #[test]
    fn aggregate_splits_and_rebases_timestamps() {
        let mut body = BytesMut::new();
        for (i, (kind, ts, data)) in
            [(9u8, 1000u32, &b"video"[..]), (8, 1020, &b"au"[..])].into_iter().enumerate()
        {
            body.put_u8(kind);
            body.put_uint(data.len() as u64, 3);
            body.put_uint(u64::from(ts & 0xff_ffff), 3);
            body.put_u8((ts >> 24) as u8);
            body.put_uint(0, 3);
            body.extend_from_slice(data);
            if i == 0 {
                body.put_u32(11 + data.len() as u32);
            }
        }
        let message = RawMessage {
            csid: 4,
            header: MessageHeader { timestamp: RtmpTimestamp(50), type_id: 22, stream_id: 1 },
            payload: body.freeze(),
        };
        let parts = split_aggregate(&message).expect("valid aggregate");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].header.timestamp, RtmpTimestamp(50));
        assert_eq!(parts[0].header.type_id, 9);
        assert_eq!(&parts[0].payload[..], b"video");
        assert_eq!(parts[1].header.timestamp, RtmpTimestamp(70));
        assert_eq!(&parts[1].payload[..], b"au");
        let truncated = RawMessage { payload: message.payload.slice(..15), ..message };
        assert!(split_aggregate(&truncated).is_err());
    }
}
