//! The pure parts of `rtmp-loadtest`, kept apart from the glommio driver so they can be unit
//! tested: the synthetic H.264 + AAC stream the publishers send ([`synth`]), the send-time
//! marker every media payload carries ([`marker`]), the process-wide clock both ends of a
//! measurement read ([`clock`]), RTMP URL parsing ([`url`]) and `/proc` sampling ([`procfs`]).
//!
//! # How a measurement works
//! Publishers and players live in the same process, so one monotonic clock serves both. A
//! publisher writes, right after the FLV codec header of each audio and video payload, a
//! 16-byte [`marker::Marker`]: magic, a per-stream sequence number and the send time in
//! nanoseconds since [`clock::epoch`]. A player that receives the payload subtracts that send
//! time from its own receive time: the relay latency of that message, socket to socket,
//! including both kernels' loopback or network path.

pub mod clock;
pub mod demux;
pub mod marker;
pub mod procfs;
pub mod synth;
pub mod url;
