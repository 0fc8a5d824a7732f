//! `amf3::decode_one` on arbitrary bytes, under default or arbitrary `AmfLimits`, and the
//! re-encoding of whatever it accepts.
//!
//! Input: `[flags] [limits if flags & 1: depth: u8, string: u16, elements: u16] [bytes...]`.
//!
//! Invariants:
//! - on error the input slice has not moved;
//! - an accepted value is within the limits: no container nested deeper than `max_depth`, no
//!   string, key, class name, XML or byte array longer than `max_string_len`, at most
//!   `max_elements` values in the tree (references are copies and count what they copy);
//! - `encoded_len` is what `encode` appends, and the encoding decodes, under the same limits,
//!   to the same value (bit for bit for doubles, so NaN payloads too), consuming all of it.
//!   `encode` writes everything inline, so the value is a fixed point from there on.

use bytes::BytesMut;
use rtmp_proto::amf0::AmfLimits;
use rtmp_proto::amf3::{self, Amf3Value};

use super::input::Input;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let limits = limits(&mut input);
    let bytes = input.rest();

    let mut rest = bytes;
    let value = match amf3::decode_one(&mut rest, &limits) {
        Ok(value) => value,
        Err(_) => {
            assert_eq!(rest.len(), bytes.len(), "input moved on error");
            return;
        }
    };
    assert!(rest.len() < bytes.len(), "a value consumed nothing");
    let mut shape = Shape::default();
    shape.measure3(&value, 0);
    shape.check(&limits);

    let encoded = encode(&value);
    let mut rest = &encoded[..];
    let again = match amf3::decode_one(&mut rest, &limits) {
        Ok(again) => again,
        Err(error) => panic!("re-encoding {value:?} does not decode: {error:?}"),
    };
    assert!(rest.is_empty(), "{} bytes left after the re-encoded value", rest.len());
    assert_eq!(encode(&again), encoded, "re-encoding is not stable");
    if !shape.nan {
        assert_eq!(again, value);
    }
}

/// Default limits, or small ones from the input (zero depth and zero elements included).
pub fn limits(input: &mut Input<'_>) -> AmfLimits {
    if input.u8() & 1 == 0 {
        return AmfLimits::default();
    }
    AmfLimits {
        max_depth: usize::from(input.u8() % 48),
        max_string_len: usize::from(input.u16()),
        max_elements: usize::from(input.u16()),
    }
}

fn encode(value: &Amf3Value) -> Vec<u8> {
    let mut out = BytesMut::new();
    amf3::encode(value, &mut out);
    assert_eq!(out.len(), amf3::encoded_len(value), "encoded_len of {value:?}");
    out.to_vec()
}

/// What a decoded tree holds, to check it against the limits.
#[derive(Debug, Default)]
pub struct Shape {
    /// Values in the tree, each counted once.
    pub elements: usize,
    /// The depth of the deepest container member (top-level values are at depth 0).
    pub depth: usize,
    /// The longest string, key, class name or byte array.
    pub longest: usize,
    /// A NaN somewhere: values then do not compare equal to themselves.
    pub nan: bool,
}

impl Shape {
    pub fn check(&self, limits: &AmfLimits) {
        assert!(self.elements <= limits.max_elements, "{self:?} over {limits:?}");
        assert!(self.depth <= limits.max_depth, "{self:?} over {limits:?}");
        assert!(self.longest <= limits.max_string_len, "{self:?} over {limits:?}");
    }

    pub fn text(&mut self, len: usize) {
        self.longest = self.longest.max(len);
    }

    pub fn number(&mut self, n: f64) {
        self.nan |= n.is_nan();
    }

    /// Records an AMF3 value found at `depth`.
    pub fn measure3(&mut self, value: &Amf3Value, depth: usize) {
        self.elements += 1;
        self.depth = self.depth.max(depth);
        match value {
            Amf3Value::Undefined
            | Amf3Value::Null
            | Amf3Value::Boolean(_)
            | Amf3Value::Integer(_) => {}
            Amf3Value::Double(n) | Amf3Value::Date(n) => self.number(*n),
            Amf3Value::String(s) | Amf3Value::XmlDoc(s) | Amf3Value::Xml(s) => self.text(s.len()),
            Amf3Value::ByteArray(b) => self.text(b.len()),
            Amf3Value::Array { assoc, dense } => {
                for (key, value) in assoc {
                    self.text(key.len());
                    self.measure3(value, depth + 1);
                }
                for value in dense {
                    self.measure3(value, depth + 1);
                }
            }
            Amf3Value::Object { class_name, properties } => {
                self.text(class_name.len());
                for (key, value) in properties {
                    self.text(key.len());
                    self.measure3(value, depth + 1);
                }
            }
        }
    }
}
