//! NetConnection and NetStream commands (RTMP spec 1.0, section 7.2) and the `onStatus`
//! replies players and encoders wait for.
//!
//! A command message is AMF: name, transaction id, command object, then arguments. Type 17
//! (AMF3 command) is the same with one leading format byte and AVM+ switches inside. Clients
//! send more than the spec lists (FMLE's releaseStream/FCPublish, Flash's getStreamLength,
//! ffmpeg's _checkbw): [`ClientCommand::Other`] keeps those, so the session can answer what it
//! does not support instead of leaving the client waiting.

use bytes::{Bytes, BytesMut};

use crate::amf0::{self, Amf0Value, AmfError, AmfLimits};
use crate::message::type_id;

/// Why a command could not be read.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandError {
    Amf(AmfError),
    /// The first value is not a string command name.
    NoName,
    /// A command known by name misses an argument it cannot do without.
    MissingArgument {
        command: &'static str,
        argument: &'static str,
    },
    /// Type 17 with no payload.
    Empty,
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::Amf(e) => write!(f, "command AMF: {e}"),
            CommandError::NoName => f.write_str("command without a name"),
            CommandError::MissingArgument { command, argument } => {
                write!(f, "{command} without {argument}")
            }
            CommandError::Empty => f.write_str("empty command message"),
        }
    }
}

impl std::error::Error for CommandError {}

impl From<AmfError> for CommandError {
    fn from(e: AmfError) -> Self {
        CommandError::Amf(e)
    }
}

/// The generic shape of every command.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandMessage {
    pub name: String,
    pub transaction_id: f64,
    /// Usually an object (connect) or null.
    pub command_object: Amf0Value,
    pub args: Vec<Amf0Value>,
}

impl CommandMessage {
    pub fn new(name: impl Into<String>, transaction_id: f64, command_object: Amf0Value) -> Self {
        Self { name: name.into(), transaction_id, command_object, args: Vec::new() }
    }

    pub fn arg(mut self, value: Amf0Value) -> Self {
        self.args.push(value);
        self
    }

    /// Decodes a command message body of type 20 (AMF0) or 17 (AMF3).
    pub fn decode(type_id: u8, payload: &[u8], limits: &AmfLimits) -> Result<Self, CommandError> {
        let body = amf_body(type_id, payload).ok_or(CommandError::Empty)?;
        let mut values = amf0::decode(body, limits)?.into_iter();
        let name = match values.next() {
            Some(v) => v.as_str().ok_or(CommandError::NoName)?.to_owned(),
            None => return Err(CommandError::NoName),
        };
        // Some clients leave out the transaction id and command object of notifications.
        let transaction_id = values.next().and_then(|v| v.as_f64()).unwrap_or(0.0);
        let command_object = values.next().unwrap_or(Amf0Value::Null);
        Ok(Self { name, transaction_id, command_object, args: values.collect() })
    }

    /// The AMF0 body of this command (message type 20).
    pub fn encode(&self, out: &mut BytesMut) {
        amf0::encode(&Amf0Value::String(self.name.clone()), out);
        amf0::encode(&Amf0Value::Number(self.transaction_id), out);
        amf0::encode(&self.command_object, out);
        amf0::encode_all(&self.args, out);
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(128);
        self.encode(&mut out);
        out.freeze()
    }
}

/// The AMF0 part of a command or data message: type 17 and 15 carry one leading format byte
/// (zero) before AMF0 values that may switch to AMF3.
pub fn amf_body(type_id: u8, payload: &[u8]) -> Option<&[u8]> {
    if type_id == type_id::COMMAND_AMF3 || type_id == type_id::DATA_AMF3 {
        payload.get(1..)
    } else {
        Some(payload)
    }
}

/// A stream name as a client gives it to publish or play: `key?query`. The key names the
/// stream; the query (tokens, `?vhost=` and the like) is kept for whoever authorises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamName {
    pub key: String,
    pub query: Option<String>,
}

impl StreamName {
    pub fn parse(raw: &str) -> Self {
        match raw.split_once('?') {
            Some((key, query)) => Self { key: key.to_owned(), query: Some(query.to_owned()) },
            None => Self { key: raw.to_owned(), query: None },
        }
    }
}

/// What `connect` tells the server.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectParams {
    pub app: String,
    pub tc_url: Option<String>,
    pub flash_ver: Option<String>,
    /// 0 for AMF0, 3 for AMF3; the server answers in kind.
    pub object_encoding: f64,
}

/// The publishing mode: live is relayed; record and append ask the server to record too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishKind {
    Live,
    Record,
    Append,
}

/// A command from a client to a server, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientCommand {
    Connect(ConnectParams),
    CreateStream,
    ReleaseStream {
        name: String,
    },
    FcPublish {
        name: String,
    },
    FcUnpublish {
        name: String,
    },
    Publish {
        name: StreamName,
        kind: PublishKind,
    },
    Play {
        name: StreamName,
        start: f64,
    },
    DeleteStream {
        stream_id: u32,
    },
    CloseStream,
    GetStreamLength {
        name: String,
    },
    Pause {
        pause: bool,
        millis: f64,
    },
    ReceiveAudio(bool),
    ReceiveVideo(bool),
    /// Calls that need only an empty `_result` so the client goes on: FCSubscribe and
    /// FCUnsubscribe (ffmpeg sends them for live play), `_checkbw`.
    Courtesy,
    /// `_result`/`_error` replies to calls the server made (e.g. onBWDone checks), ignored.
    Reply,
    /// Anything else; answered with `_error` when it carries a transaction id.
    Other,
}

impl ClientCommand {
    /// Reads the typed meaning of a command from a client.
    pub fn from_message(message: &CommandMessage) -> Result<Self, CommandError> {
        let string_arg = |i: usize| message.args.get(i).and_then(Amf0Value::as_str);
        Ok(match message.name.as_str() {
            "connect" => {
                let object = &message.command_object;
                let text = |key| object.get(key).and_then(Amf0Value::as_str).map(str::to_owned);
                ClientCommand::Connect(ConnectParams {
                    app: text("app").ok_or(CommandError::MissingArgument {
                        command: "connect",
                        argument: "app",
                    })?,
                    tc_url: text("tcUrl"),
                    flash_ver: text("flashVer"),
                    object_encoding: object
                        .get("objectEncoding")
                        .and_then(Amf0Value::as_f64)
                        .unwrap_or(0.0),
                })
            }
            "createStream" => ClientCommand::CreateStream,
            "releaseStream" => {
                ClientCommand::ReleaseStream { name: string_arg(0).unwrap_or_default().to_owned() }
            }
            "FCPublish" => {
                ClientCommand::FcPublish { name: string_arg(0).unwrap_or_default().to_owned() }
            }
            "FCUnpublish" => {
                ClientCommand::FcUnpublish { name: string_arg(0).unwrap_or_default().to_owned() }
            }
            "publish" => {
                let name = string_arg(0).ok_or(CommandError::MissingArgument {
                    command: "publish",
                    argument: "name",
                })?;
                let kind = match string_arg(1) {
                    Some("record") => PublishKind::Record,
                    Some("append") => PublishKind::Append,
                    _ => PublishKind::Live,
                };
                ClientCommand::Publish { name: StreamName::parse(name), kind }
            }
            "play" => {
                let name = string_arg(0)
                    .ok_or(CommandError::MissingArgument { command: "play", argument: "name" })?;
                let start = message.args.get(1).and_then(Amf0Value::as_f64).unwrap_or(-2.0);
                ClientCommand::Play { name: StreamName::parse(name), start }
            }
            "deleteStream" => ClientCommand::DeleteStream {
                stream_id: message.args.first().and_then(Amf0Value::as_f64).unwrap_or(0.0) as u32,
            },
            "closeStream" => ClientCommand::CloseStream,
            "getStreamLength" => ClientCommand::GetStreamLength {
                name: string_arg(0).unwrap_or_default().to_owned(),
            },
            "pause" | "pauseRaw" => ClientCommand::Pause {
                pause: message.args.first().and_then(Amf0Value::as_bool).unwrap_or(false),
                millis: message.args.get(1).and_then(Amf0Value::as_f64).unwrap_or(0.0),
            },
            "receiveAudio" => ClientCommand::ReceiveAudio(
                message.args.first().and_then(Amf0Value::as_bool).unwrap_or(true),
            ),
            "receiveVideo" => ClientCommand::ReceiveVideo(
                message.args.first().and_then(Amf0Value::as_bool).unwrap_or(true),
            ),
            "FCSubscribe" | "FCUnsubscribe" | "_checkbw" => ClientCommand::Courtesy,
            "_result" | "_error" => ClientCommand::Reply,
            _ => ClientCommand::Other,
        })
    }

    /// What the command is, for log lines and error descriptions: the protocol's name where one
    /// variant has one name, never text the peer chose.
    pub fn name(&self) -> &'static str {
        match self {
            ClientCommand::Connect(_) => "connect",
            ClientCommand::CreateStream => "createStream",
            ClientCommand::ReleaseStream { .. } => "releaseStream",
            ClientCommand::FcPublish { .. } => "FCPublish",
            ClientCommand::FcUnpublish { .. } => "FCUnpublish",
            ClientCommand::Publish { .. } => "publish",
            ClientCommand::Play { .. } => "play",
            ClientCommand::DeleteStream { .. } => "deleteStream",
            ClientCommand::CloseStream => "closeStream",
            ClientCommand::GetStreamLength { .. } => "getStreamLength",
            ClientCommand::Pause { .. } => "pause",
            ClientCommand::ReceiveAudio(_) => "receiveAudio",
            ClientCommand::ReceiveVideo(_) => "receiveVideo",
            ClientCommand::Courtesy => "courtesy call",
            ClientCommand::Reply => "reply",
            ClientCommand::Other => "unknown call",
        }
    }
}

/// onStatus levels.
pub mod level {
    pub const STATUS: &str = "status";
    pub const ERROR: &str = "error";
    pub const WARNING: &str = "warning";
}

/// The onStatus and connect result codes players and encoders act on.
pub mod code {
    pub const CONNECT_SUCCESS: &str = "NetConnection.Connect.Success";
    pub const CONNECT_REJECTED: &str = "NetConnection.Connect.Rejected";
    /// `_error` to a call the server does not support or that does not fit the session's state.
    pub const CALL_FAILED: &str = "NetConnection.Call.Failed";
    pub const PUBLISH_START: &str = "NetStream.Publish.Start";
    pub const PUBLISH_BAD_NAME: &str = "NetStream.Publish.BadName";
    /// Access control refused the publish (librtmp, and so OBS, stops on it; ffmpeg reports it).
    pub const PUBLISH_DENIED: &str = "NetStream.Publish.Denied";
    pub const UNPUBLISH_SUCCESS: &str = "NetStream.Unpublish.Success";
    pub const PLAY_RESET: &str = "NetStream.Play.Reset";
    pub const PLAY_START: &str = "NetStream.Play.Start";
    pub const PLAY_STOP: &str = "NetStream.Play.Stop";
    pub const PLAY_STREAM_NOT_FOUND: &str = "NetStream.Play.StreamNotFound";
    pub const PLAY_FAILED: &str = "NetStream.Play.Failed";
    /// Access control refused the play.
    pub const PLAY_DENIED: &str = "NetStream.Play.Denied";
    pub const PLAY_PUBLISH_NOTIFY: &str = "NetStream.Play.PublishNotify";
    pub const PLAY_UNPUBLISH_NOTIFY: &str = "NetStream.Play.UnpublishNotify";
    pub const PAUSE_NOTIFY: &str = "NetStream.Pause.Notify";
    pub const UNPAUSE_NOTIFY: &str = "NetStream.Unpause.Notify";
    pub const DATA_START: &str = "NetStream.Data.Start";
}

/// `onStatus(level, code, description)` on a message stream; `details` becomes the `details`
/// property players show for play/publish (the stream name).
pub fn on_status(
    level: &str,
    code: &str,
    description: &str,
    details: Option<&str>,
) -> CommandMessage {
    let mut info = vec![
        ("level", Amf0Value::string(level)),
        ("code", Amf0Value::string(code)),
        ("description", Amf0Value::string(description)),
    ];
    if let Some(details) = details {
        info.push(("details", Amf0Value::string(details)));
    }
    CommandMessage::new("onStatus", 0.0, Amf0Value::Null).arg(Amf0Value::object(info))
}

/// The `_result` of connect, in the shape FMS sends and Flash, OBS and ffmpeg accept.
pub fn connect_result(transaction_id: f64, object_encoding: f64) -> CommandMessage {
    let properties = Amf0Value::object([
        ("fmsVer", Amf0Value::string("FMS/3,5,7,7009")),
        ("capabilities", Amf0Value::Number(31.0)),
        ("mode", Amf0Value::Number(1.0)),
    ]);
    let information = Amf0Value::object([
        ("level", Amf0Value::string(level::STATUS)),
        ("code", Amf0Value::string(code::CONNECT_SUCCESS)),
        ("description", Amf0Value::string("Connection succeeded.")),
        ("objectEncoding", Amf0Value::Number(object_encoding)),
    ]);
    CommandMessage::new("_result", transaction_id, properties).arg(information)
}

/// A `_result` with a null command object and the given arguments.
pub fn result(transaction_id: f64, args: Vec<Amf0Value>) -> CommandMessage {
    CommandMessage { name: "_result".into(), transaction_id, command_object: Amf0Value::Null, args }
}

/// An `_error` for a call the server does not support, so the client does not wait forever.
pub fn error(transaction_id: f64, code: &str, description: &str) -> CommandMessage {
    CommandMessage::new("_error", transaction_id, Amf0Value::Null).arg(Amf0Value::object([
        ("level", Amf0Value::string(level::ERROR)),
        ("code", Amf0Value::string(code)),
        ("description", Amf0Value::string(description)),
    ]))
}

/// The name of a data message (`onMetaData`, `@setDataFrame`, `|RtmpSampleAccess`...).
pub fn data_name(type_id: u8, payload: &[u8], limits: &AmfLimits) -> Option<String> {
    let mut body = amf_body(type_id, payload)?;
    amf0::decode_one(&mut body, limits).ok()?.as_str().map(str::to_owned)
}

/// For `@setDataFrame` (how encoders send metadata meant for players), the same payload without
/// the wrapper: what players expect to receive as `onMetaData`. `None` for other data messages.
/// The result is a slice of the input: no copy, and the metadata bytes stay exactly as sent.
pub fn strip_set_data_frame(type_id: u8, payload: &Bytes, limits: &AmfLimits) -> Option<Bytes> {
    let mut body = amf_body(type_id, payload)?;
    let before = body.len();
    let name = amf0::decode_one(&mut body, limits).ok()?;
    if name.as_str()? != "@setDataFrame" {
        return None;
    }
    let consumed = before - body.len() + (payload.len() - before);
    Some(payload.slice(consumed..))
}

/// `|RtmpSampleAccess(true, true)`: lets Flash-based players read audio and video samples.
pub fn rtmp_sample_access() -> Bytes {
    let mut out = BytesMut::with_capacity(24);
    amf0::encode_all(
        &[
            Amf0Value::string("|RtmpSampleAccess"),
            Amf0Value::Boolean(true),
            Amf0Value::Boolean(true),
        ],
        &mut out,
    );
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(values: &[Amf0Value]) -> Bytes {
        let mut out = BytesMut::new();
        amf0::encode_all(values, &mut out);
        out.freeze()
    }

    #[test]
    fn parses_publish_and_play_with_query() {
        let limits = AmfLimits::default();
        let publish = encoded(&[
            Amf0Value::string("publish"),
            Amf0Value::Number(5.0),
            Amf0Value::Null,
            Amf0Value::string("cam1?token=abc"),
            Amf0Value::string("live"),
        ]);
        let message = CommandMessage::decode(type_id::COMMAND_AMF0, &publish, &limits).unwrap();
        assert_eq!(message.transaction_id, 5.0);
        assert_eq!(
            ClientCommand::from_message(&message).unwrap(),
            ClientCommand::Publish {
                name: StreamName { key: "cam1".into(), query: Some("token=abc".into()) },
                kind: PublishKind::Live
            }
        );
        let play = encoded(&[
            Amf0Value::string("play"),
            Amf0Value::Number(4.0),
            Amf0Value::Null,
            Amf0Value::string("cam1"),
            Amf0Value::Number(-2000.0),
        ]);
        let mut amf3 = vec![0u8];
        amf3.extend_from_slice(&play);
        let message = CommandMessage::decode(type_id::COMMAND_AMF3, &amf3, &limits).unwrap();
        assert_eq!(
            ClientCommand::from_message(&message).unwrap(),
            ClientCommand::Play {
                name: StreamName { key: "cam1".into(), query: None },
                start: -2000.0
            }
        );
    }

    #[test]
    fn publish_without_name_is_an_error_not_a_panic() {
        let message = CommandMessage::new("publish", 5.0, Amf0Value::Null);
        assert!(matches!(
            ClientCommand::from_message(&message),
            Err(CommandError::MissingArgument { command: "publish", .. })
        ));
        let limits = AmfLimits::default();
        assert_eq!(
            CommandMessage::decode(type_id::COMMAND_AMF3, &[], &limits),
            Err(CommandError::Empty)
        );
        let number_first = encoded(&[Amf0Value::Number(1.0)]);
        assert_eq!(
            CommandMessage::decode(type_id::COMMAND_AMF0, &number_first, &limits),
            Err(CommandError::NoName)
        );
    }

    #[test]
    fn strips_set_data_frame_without_copying() {
        let limits = AmfLimits::default();
        let metadata = [
            Amf0Value::string("onMetaData"),
            Amf0Value::EcmaArray(vec![("width".into(), Amf0Value::Number(1280.0))]),
        ];
        let mut wrapped = encoded(&[Amf0Value::string("@setDataFrame")]).to_vec();
        wrapped.extend_from_slice(&encoded(&metadata));
        let wrapped = Bytes::from(wrapped);
        let stripped = strip_set_data_frame(type_id::DATA_AMF0, &wrapped, &limits).unwrap();
        assert_eq!(stripped, encoded(&metadata));
        assert_eq!(
            data_name(type_id::DATA_AMF0, &stripped, &limits).as_deref(),
            Some("onMetaData")
        );
        assert!(strip_set_data_frame(type_id::DATA_AMF0, &stripped, &limits).is_none());
    }

    #[test]
    fn on_status_round_trips() {
        let status = on_status(level::STATUS, code::PLAY_START, "Started playing", Some("cam1"));
        let bytes = status.to_bytes();
        let decoded =
            CommandMessage::decode(type_id::COMMAND_AMF0, &bytes, &AmfLimits::default()).unwrap();
        assert_eq!(decoded, status);
        assert_eq!(decoded.args[0].get("code").and_then(Amf0Value::as_str), Some(code::PLAY_START));
    }
}
