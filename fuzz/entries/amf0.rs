//! `amf0::decode` and `amf0::decode_one` on arbitrary bytes (a command or data message body),
//! under default or arbitrary `AmfLimits`, and the re-encoding of whatever they accept.
//!
//! Input: `[flags] [limits if flags & 1: depth: u8, string: u16, elements: u16] [bytes...]`.
//!
//! Invariants:
//! - `decode_one` leaves its input where it was on error, and on success agrees with the first
//!   value of `decode` (both start with empty AMF3 tables and the same budget);
//! - what `decode` accepts is within the limits: nesting, string lengths, and at most
//!   `max_elements` values in the whole message (an AVM+ switch costs one plus its AMF3 value);
//! - `encoded_len` is what `encode` appends, and the encoding decodes under the same limits to
//!   the same values, up to the normalizations the module documents (a string over 65535 bytes
//!   comes back as a long string); from there on encoding is a fixed point, byte for byte.

use bytes::BytesMut;
use rtmp_proto::amf0::{self, Amf0Value};

use super::amf3::{limits, Shape};
use super::input::Input;

/// Longest string a 16-bit length prefix carries: longer ones are written as long strings.
const MAX_SHORT_LEN: usize = u16::MAX as usize;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let limits = limits(&mut input);
    let bytes = input.rest();

    let mut rest = bytes;
    let first = amf0::decode_one(&mut rest, &limits);
    if first.is_err() {
        assert_eq!(rest.len(), bytes.len(), "input moved on error");
    } else {
        assert!(rest.len() < bytes.len(), "a value consumed nothing");
    }

    let Ok(values) = amf0::decode(bytes, &limits) else { return };
    let mut shape = Shape::default();
    for value in &values {
        measure(&mut shape, value, 0);
    }
    shape.check(&limits);
    if let (Ok(first), Some(head)) = (&first, values.first()) {
        if !shape.nan {
            assert_eq!(first, head, "decode_one and decode disagree");
        }
    }

    let encoded = encode(&values);
    let again = match amf0::decode(&encoded, &limits) {
        Ok(again) => again,
        Err(error) => panic!("re-encoding {values:?} does not decode: {error:?}"),
    };
    assert_eq!(encode(&again), encoded, "re-encoding is not stable");
    if !shape.nan {
        let normalized: Vec<Amf0Value> = values.into_iter().map(normalize).collect();
        assert_eq!(again, normalized);
    }
}

fn encode(values: &[Amf0Value]) -> Vec<u8> {
    let mut out = BytesMut::new();
    amf0::encode_all(values, &mut out);
    let expected: usize = values.iter().map(amf0::encoded_len).sum();
    assert_eq!(out.len(), expected, "encoded_len of {values:?}");
    out.to_vec()
}

/// What decoding the encoding of `value` gives back.
fn normalize(value: Amf0Value) -> Amf0Value {
    let props = |props: Vec<(String, Amf0Value)>| {
        props.into_iter().map(|(k, v)| (k, normalize(v))).collect::<Vec<_>>()
    };
    match value {
        Amf0Value::String(s) if s.len() > MAX_SHORT_LEN => Amf0Value::LongString(s),
        Amf0Value::Object(p) => Amf0Value::Object(props(p)),
        Amf0Value::EcmaArray(p) => Amf0Value::EcmaArray(props(p)),
        Amf0Value::TypedObject { class_name, properties } => {
            Amf0Value::TypedObject { class_name, properties: props(properties) }
        }
        Amf0Value::StrictArray(items) => {
            Amf0Value::StrictArray(items.into_iter().map(normalize).collect())
        }
        other => other,
    }
}

fn measure(shape: &mut Shape, value: &Amf0Value, depth: usize) {
    shape.elements += 1;
    shape.depth = shape.depth.max(depth);
    let props = |shape: &mut Shape, props: &[(String, Amf0Value)]| {
        for (key, value) in props {
            shape.text(key.len());
            measure(shape, value, depth + 1);
        }
    };
    match value {
        Amf0Value::Number(n) => shape.number(*n),
        Amf0Value::Date { millis, .. } => shape.number(*millis),
        Amf0Value::String(s) | Amf0Value::LongString(s) => shape.text(s.len()),
        Amf0Value::Object(p) | Amf0Value::EcmaArray(p) => props(shape, p),
        Amf0Value::TypedObject { class_name, properties } => {
            shape.text(class_name.len());
            props(shape, properties);
        }
        Amf0Value::StrictArray(items) => {
            for item in items {
                measure(shape, item, depth + 1);
            }
        }
        Amf0Value::Avmplus(value) => shape.measure3(value, depth),
        Amf0Value::Boolean(_)
        | Amf0Value::Null
        | Amf0Value::Undefined
        | Amf0Value::Reference(_) => {}
    }
}
