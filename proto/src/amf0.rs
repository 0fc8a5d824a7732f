//! AMF0, the value encoding of RTMP commands and data messages (Adobe "Action Message Format --
//! AMF 0", 2006).
//!
//! Every length and nesting level here comes from the peer, so decoding is bounded by
//! [`AmfLimits`]: depth stops stack exhaustion by `[[[[...` bombs, string length and element count
//! stop memory blow-ups from small inputs, and nothing is allocated from a declared length before
//! the bytes are there.
//!
//! # Decoding
//!
//! [`decode`] reads a whole message body (the values of one command or data message) and is what
//! the session calls; [`decode_one`] reads a single value. Decisions a caller should know:
//!
//! - **Element budget.** Every value costs one element of [`AmfLimits::max_elements`], at every
//!   depth, and one budget covers a whole [`decode`] call. An AVM+ value costs one for the switch
//!   plus what its AMF3 value costs (AMF3 references cost what they copy, see [`crate::amf3`]).
//! - **String limit.** [`AmfLimits::max_string_len`] bounds every string, object key, class name
//!   and XML document, checked on the declared length before anything is read and again after
//!   invalid UTF-8 has been replaced lossily (U+FFFD is 3 bytes, so replacement can grow text).
//! - **ECMA array count is advisory.** ffmpeg and others write counts that do not match the
//!   properties, so the count is skipped and properties are read until the object-end marker.
//! - **ECMA array end marker may be missing at the very end of the input**: input that ends where
//!   the next key would start closes the array, as in SRS (`SrsAmf0EcmaArray::read` reads while
//!   the buffer is not empty) and librtmp; so does the empty key with only the final `0x09`
//!   missing. Anywhere else the marker is required. Objects and typed objects must be terminated:
//!   every known encoder writes their end marker, and being strict there keeps a cut-off message
//!   from passing as complete. The price: a message cut exactly at a property boundary of a
//!   trailing ECMA array decodes as the properties so far.
//! - **An empty key followed by a value** (not by `0x09`) is a property named `""`. It is
//!   unambiguous on the wire, since no value starts with `0x09`, and lets such properties
//!   round-trip.
//! - Type by type: MovieClip (0x04) and RecordSet (0x0e) are reserved and fail with
//!   [`AmfError::UnknownMarker`]; Unsupported (0x0d) decodes as [`Amf0Value::Undefined`], which
//!   is what it means to ActionScript; XML document (0x0f) decodes into [`Amf0Value::String`];
//!   Reference (0x07) is kept as an index, never resolved; an object-end marker (0x09) anywhere but
//!   after an empty key is [`AmfError::Malformed`].
//! - AMF3 values behind AVM+ switches (0x11) share one set of AMF3 reference tables per
//!   [`decode`] call, so a later switched value may refer to strings and objects of an earlier
//!   one, as in one AMF3 command message. [`decode_one`] starts fresh tables each call.
//! - On error [`decode_one`] leaves its input slice where it was.
//! - The decoder recurses once per nesting level, so [`AmfLimits::max_depth`] also bounds its
//!   stack use: the default depth runs in well under 256 KiB of stack (tested). Keep it in the
//!   tens.
//! - An AMF3 command message (type 17) starts with one format byte, `0x00`, before its AMF0
//!   values: skip it before calling [`decode`], as SRS does, or it reads as a number.
//!
//! # Encoding
//!
//! The encoder is total: any [`Amf0Value`] produces valid AMF0. A [`Amf0Value::String`] over
//! 65535 bytes is written as a long string. Sizes the wire cannot express at all are clamped: a
//! key or class name is cut to 65535 bytes and a long string to 4 GiB - 1 (at a character
//! boundary), a strict array to 2^32 - 1 elements. Decoding then encoding reproduces the input
//! bytes for the canonical form; what is not canonical is normalized: booleans other than 0/1,
//! ECMA array counts (written as the real count), missing end markers, Unsupported and XML
//! document markers.

use bytes::{BufMut, BytesMut};

use crate::amf3::{self, Amf3Value};

/// Bounds on what a peer can make the decoder build. Shared by AMF0 and AMF3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmfLimits {
    /// Deepest nesting of objects/arrays. Stops recursion bombs (`0x03 0x03 0x03 ...`) from
    /// exhausting the stack.
    pub max_depth: usize,
    /// Longest string in bytes. Stops a 4 GiB long-string header from reserving memory.
    pub max_string_len: usize,
    /// Most values (at every depth, together) in one decode call. Stops a message full of
    /// empty objects from expanding into a large tree.
    pub max_elements: usize,
}

impl AmfLimits {
    /// The defaults, usable in constant positions (the server's flags take theirs from here).
    pub const DEFAULT: AmfLimits =
        AmfLimits { max_depth: 32, max_string_len: 64 * 1024, max_elements: 16 * 1024 };
}

impl Default for AmfLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmfError {
    /// The input ended inside a value.
    Truncated,
    /// A type marker this codec does not know (or refuses, such as RecordSet).
    UnknownMarker(u8),
    /// Nesting deeper than [`AmfLimits::max_depth`].
    TooDeep,
    /// A string longer than [`AmfLimits::max_string_len`].
    StringTooLong(usize),
    /// More values than [`AmfLimits::max_elements`].
    TooManyElements,
    /// A reference to an object, string or trait that was never decoded.
    BadReference(u32),
    /// Structurally invalid input (e.g. a missing object-end marker, an AMF3 integer overflow).
    Malformed(&'static str),
}

impl std::fmt::Display for AmfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AmfError::Truncated => f.write_str("AMF value truncated"),
            AmfError::UnknownMarker(m) => write!(f, "unknown AMF type marker 0x{m:02x}"),
            AmfError::TooDeep => f.write_str("AMF nesting too deep"),
            AmfError::StringTooLong(n) => write!(f, "AMF string of {n} bytes over the limit"),
            AmfError::TooManyElements => f.write_str("too many AMF values"),
            AmfError::BadReference(r) => write!(f, "AMF reference {r} to nothing decoded"),
            AmfError::Malformed(why) => write!(f, "malformed AMF: {why}"),
        }
    }
}

impl std::error::Error for AmfError {}

/// One AMF0 value. Object-like values keep their properties in wire order, because clients
/// (and golden tests) care about order and duplicate keys are legal on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Amf0Value {
    Number(f64),
    Boolean(bool),
    /// String (0x02) and XML document (0x0f) both decode here; invalid UTF-8 is replaced
    /// lossily, since names and keys are compared as text.
    String(String),
    /// Long string (0x0c): a string over 65535 bytes.
    LongString(String),
    Object(Vec<(String, Amf0Value)>),
    /// ECMA array (0x08): an associative array; its declared count is advisory and not trusted.
    EcmaArray(Vec<(String, Amf0Value)>),
    StrictArray(Vec<Amf0Value>),
    Null,
    Undefined,
    /// Reference (0x07) to the n-th complex value decoded earlier in the same message. Kept as
    /// an index rather than resolved, so a reference can never multiply memory.
    Reference(u16),
    /// Date (0x0b): milliseconds since the Unix epoch, and a time zone that must be ignored.
    Date {
        millis: f64,
        timezone: i16,
    },
    TypedObject {
        class_name: String,
        properties: Vec<(String, Amf0Value)>,
    },
    /// AVM+ switch (0x11): the next value is AMF3.
    Avmplus(Amf3Value),
}

impl Amf0Value {
    /// The text of a string value (short or long).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Amf0Value::String(s) | Amf0Value::LongString(s) => Some(s),
            Amf0Value::Avmplus(v) => v.as_str(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Amf0Value::Number(n) => Some(*n),
            Amf0Value::Avmplus(v) => v.as_f64(),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Amf0Value::Boolean(b) => Some(*b),
            Amf0Value::Avmplus(v) => v.as_bool(),
            _ => None,
        }
    }

    /// The properties of an object, ECMA array or typed object.
    pub fn properties(&self) -> Option<&[(String, Amf0Value)]> {
        match self {
            Amf0Value::Object(p) | Amf0Value::EcmaArray(p) => Some(p),
            Amf0Value::TypedObject { properties, .. } => Some(properties),
            _ => None,
        }
    }

    /// The first property called `key` of an object-like value.
    pub fn get(&self, key: &str) -> Option<&Amf0Value> {
        self.properties()?.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Shorthand for a string value.
    pub fn string(s: impl Into<String>) -> Self {
        Amf0Value::String(s.into())
    }

    /// Shorthand for an object from `(key, value)` pairs.
    pub fn object<K: Into<String>>(props: impl IntoIterator<Item = (K, Amf0Value)>) -> Self {
        Amf0Value::Object(props.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

/// AMF0 type markers (AMF0 spec, section 2.1).
mod marker {
    pub const NUMBER: u8 = 0x00;
    pub const BOOLEAN: u8 = 0x01;
    pub const STRING: u8 = 0x02;
    pub const OBJECT: u8 = 0x03;
    pub const MOVIECLIP: u8 = 0x04;
    pub const NULL: u8 = 0x05;
    pub const UNDEFINED: u8 = 0x06;
    pub const REFERENCE: u8 = 0x07;
    pub const ECMA_ARRAY: u8 = 0x08;
    pub const OBJECT_END: u8 = 0x09;
    pub const STRICT_ARRAY: u8 = 0x0a;
    pub const DATE: u8 = 0x0b;
    pub const LONG_STRING: u8 = 0x0c;
    pub const UNSUPPORTED: u8 = 0x0d;
    pub const RECORDSET: u8 = 0x0e;
    pub const XML_DOCUMENT: u8 = 0x0f;
    pub const TYPED_OBJECT: u8 = 0x10;
    pub const AVMPLUS: u8 = 0x11;
}

/// Longest string a 16-bit length prefix can describe: keys, class names, short strings.
const MAX_SHORT_LEN: usize = u16::MAX as usize;
/// Longest string a 32-bit length prefix can describe.
const MAX_LONG_LEN: usize = u32::MAX as usize;

/// Decodes every value in `input`, in order, until it ends (a command is its name, transaction
/// id, command object and arguments; a data message its handler name and values).
///
/// One [`AmfLimits::max_elements`] budget and one set of AMF3 reference tables cover the whole
/// call. An empty input gives an empty list.
pub fn decode(input: &[u8], limits: &AmfLimits) -> Result<Vec<Amf0Value>, AmfError> {
    let mut decoder = Decoder::new(limits);
    let mut rest = input;
    let mut values = Vec::new();
    while !rest.is_empty() {
        values.push(decoder.value(&mut rest, 0)?);
    }
    Ok(values)
}

/// Decodes one value from the front of `input` and advances `input` past it. On error `input`
/// is left unchanged.
///
/// AMF3 reference tables start empty: to decode several values of one message that may use AVM+
/// switches, use [`decode`].
pub fn decode_one(input: &mut &[u8], limits: &AmfLimits) -> Result<Amf0Value, AmfError> {
    let mut rest = *input;
    let value = Decoder::new(limits).value(&mut rest, 0)?;
    *input = rest;
    Ok(value)
}

/// Appends the AMF0 encoding of `value` to `out`.
pub fn encode(value: &Amf0Value, out: &mut BytesMut) {
    match value {
        Amf0Value::Number(n) => {
            out.put_u8(marker::NUMBER);
            out.put_f64(*n);
        }
        Amf0Value::Boolean(b) => {
            out.put_u8(marker::BOOLEAN);
            out.put_u8(u8::from(*b));
        }
        Amf0Value::String(s) if s.len() <= MAX_SHORT_LEN => {
            out.put_u8(marker::STRING);
            put_short_str(out, s);
        }
        Amf0Value::String(s) | Amf0Value::LongString(s) => {
            out.put_u8(marker::LONG_STRING);
            put_long_str(out, s);
        }
        Amf0Value::Object(props) => {
            out.put_u8(marker::OBJECT);
            put_properties(out, props);
        }
        Amf0Value::EcmaArray(props) => {
            out.put_u8(marker::ECMA_ARRAY);
            out.put_u32(u32::try_from(props.len()).unwrap_or(u32::MAX));
            put_properties(out, props);
        }
        Amf0Value::StrictArray(items) => {
            let items = &items[..items.len().min(MAX_LONG_LEN)];
            out.put_u8(marker::STRICT_ARRAY);
            out.put_u32(u32::try_from(items.len()).unwrap_or(u32::MAX));
            for item in items {
                encode(item, out);
            }
        }
        Amf0Value::Null => out.put_u8(marker::NULL),
        Amf0Value::Undefined => out.put_u8(marker::UNDEFINED),
        Amf0Value::Reference(index) => {
            out.put_u8(marker::REFERENCE);
            out.put_u16(*index);
        }
        Amf0Value::Date { millis, timezone } => {
            out.put_u8(marker::DATE);
            out.put_f64(*millis);
            out.put_i16(*timezone);
        }
        Amf0Value::TypedObject { class_name, properties } => {
            out.put_u8(marker::TYPED_OBJECT);
            put_short_str(out, class_name);
            put_properties(out, properties);
        }
        Amf0Value::Avmplus(value) => {
            out.put_u8(marker::AVMPLUS);
            amf3::encode(value, out);
        }
    }
}

/// Appends the AMF0 encoding of each value in turn: a whole command or data message body.
pub fn encode_all(values: &[Amf0Value], out: &mut BytesMut) {
    for value in values {
        encode(value, out);
    }
}

/// The number of bytes [`encode`] appends for `value`, to size a buffer once.
pub fn encoded_len(value: &Amf0Value) -> usize {
    match value {
        Amf0Value::Number(_) => 9,
        Amf0Value::Boolean(_) => 2,
        Amf0Value::String(s) if s.len() <= MAX_SHORT_LEN => 3 + s.len(),
        Amf0Value::String(s) | Amf0Value::LongString(s) => 5 + truncate_str(s, MAX_LONG_LEN).len(),
        Amf0Value::Object(props) => 1 + properties_len(props),
        Amf0Value::EcmaArray(props) => 5 + properties_len(props),
        Amf0Value::StrictArray(items) => {
            5 + items.iter().take(MAX_LONG_LEN).map(encoded_len).sum::<usize>()
        }
        Amf0Value::Null | Amf0Value::Undefined => 1,
        Amf0Value::Reference(_) => 3,
        Amf0Value::Date { .. } => 11,
        Amf0Value::TypedObject { class_name, properties } => {
            3 + truncate_str(class_name, MAX_SHORT_LEN).len() + properties_len(properties)
        }
        Amf0Value::Avmplus(value) => 1 + amf3::encoded_len(value),
    }
}

fn properties_len(props: &[(String, Amf0Value)]) -> usize {
    let body: usize = props
        .iter()
        .map(|(key, value)| 2 + truncate_str(key, MAX_SHORT_LEN).len() + encoded_len(value))
        .sum();
    body + 3
}

fn put_properties(out: &mut BytesMut, props: &[(String, Amf0Value)]) {
    for (key, value) in props {
        put_short_str(out, key);
        encode(value, out);
    }
    out.put_u16(0);
    out.put_u8(marker::OBJECT_END);
}

fn put_short_str(out: &mut BytesMut, s: &str) {
    let s = truncate_str(s, MAX_SHORT_LEN);
    out.put_u16(u16::try_from(s.len()).unwrap_or(u16::MAX));
    out.put_slice(s.as_bytes());
}

fn put_long_str(out: &mut BytesMut, s: &str) {
    let s = truncate_str(s, MAX_LONG_LEN);
    out.put_u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
    out.put_slice(s.as_bytes());
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary, so a
/// length the wire cannot express still yields valid UTF-8.
pub(crate) fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What one decode call may still build. AMF3 decoding inside an AVM+ switch draws on the same
/// budget, so this is shared with [`crate::amf3`].
#[derive(Debug)]
pub(crate) struct Budget {
    limits: AmfLimits,
    elements_left: usize,
}

impl Budget {
    pub(crate) fn new(limits: &AmfLimits) -> Self {
        Self { limits: *limits, elements_left: limits.max_elements }
    }

    /// Spends `n` elements of the budget.
    pub(crate) fn charge(&mut self, n: usize) -> Result<(), AmfError> {
        self.elements_left = self.elements_left.checked_sub(n).ok_or(AmfError::TooManyElements)?;
        Ok(())
    }

    pub(crate) fn elements_left(&self) -> usize {
        self.elements_left
    }

    /// The depth of the members of a container found at `depth` (top-level values are at 0),
    /// if that nesting is allowed.
    pub(crate) fn enter(&self, depth: usize) -> Result<usize, AmfError> {
        let inner = depth.saturating_add(1);
        if inner > self.limits.max_depth {
            return Err(AmfError::TooDeep);
        }
        Ok(inner)
    }

    /// Checks a declared string (or byte array) length before anything is read or allocated.
    pub(crate) fn check_len(&self, len: usize) -> Result<(), AmfError> {
        if len > self.limits.max_string_len {
            return Err(AmfError::StringTooLong(len));
        }
        Ok(())
    }

    /// Text from wire bytes whose length already passed [`Budget::check_len`]; invalid UTF-8 is
    /// replaced, and the result is checked again because replacement can make it longer.
    pub(crate) fn text(&self, bytes: &[u8]) -> Result<String, AmfError> {
        let text = String::from_utf8_lossy(bytes).into_owned();
        self.check_len(text.len())?;
        Ok(text)
    }
}

/// Splits the first `n` bytes off `input`.
pub(crate) fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], AmfError> {
    if input.len() < n {
        return Err(AmfError::Truncated);
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

fn take_array<const N: usize>(input: &mut &[u8]) -> Result<[u8; N], AmfError> {
    let (head, rest) = input.split_first_chunk::<N>().ok_or(AmfError::Truncated)?;
    *input = rest;
    Ok(*head)
}

pub(crate) fn read_u8(input: &mut &[u8]) -> Result<u8, AmfError> {
    let [b] = take_array::<1>(input)?;
    Ok(b)
}

fn read_u16(input: &mut &[u8]) -> Result<u16, AmfError> {
    take_array(input).map(u16::from_be_bytes)
}

fn read_u32(input: &mut &[u8]) -> Result<u32, AmfError> {
    take_array(input).map(u32::from_be_bytes)
}

pub(crate) fn read_f64(input: &mut &[u8]) -> Result<f64, AmfError> {
    take_array(input).map(f64::from_be_bytes)
}

/// The state of one decode call: its budget and the AMF3 reference tables of the message.
#[derive(Debug)]
struct Decoder<'a> {
    budget: Budget,
    amf3: amf3::Decoder<'a>,
}

impl<'a> Decoder<'a> {
    fn new(limits: &AmfLimits) -> Self {
        Self { budget: Budget::new(limits), amf3: amf3::Decoder::default() }
    }

    /// Decodes the value at the front of `input`; `depth` is the number of containers around it.
    fn value(&mut self, input: &mut &'a [u8], depth: usize) -> Result<Amf0Value, AmfError> {
        let marker = read_u8(input)?;
        self.budget.charge(1)?;
        let value = match marker {
            marker::NUMBER => Amf0Value::Number(read_f64(input)?),
            // Any non-zero byte is true, as in Flash Player.
            marker::BOOLEAN => Amf0Value::Boolean(read_u8(input)? != 0),
            marker::STRING => Amf0Value::String(self.short_string(input)?),
            marker::OBJECT => {
                let inner = self.budget.enter(depth)?;
                Amf0Value::Object(self.properties(input, inner, false)?)
            }
            marker::NULL => Amf0Value::Null,
            marker::UNDEFINED | marker::UNSUPPORTED => Amf0Value::Undefined,
            marker::REFERENCE => Amf0Value::Reference(read_u16(input)?),
            marker::ECMA_ARRAY => {
                let inner = self.budget.enter(depth)?;
                // The count is advisory (see the module doc): skipped, never used to allocate.
                read_u32(input)?;
                Amf0Value::EcmaArray(self.properties(input, inner, true)?)
            }
            marker::OBJECT_END => {
                return Err(AmfError::Malformed("object-end marker outside an object"))
            }
            marker::STRICT_ARRAY => {
                let inner = self.budget.enter(depth)?;
                Amf0Value::StrictArray(self.strict_array(input, inner)?)
            }
            marker::DATE => {
                let millis = read_f64(input)?;
                let timezone = i16::from_be_bytes(take_array(input)?);
                Amf0Value::Date { millis, timezone }
            }
            marker::LONG_STRING => Amf0Value::LongString(self.long_string(input)?),
            marker::XML_DOCUMENT => Amf0Value::String(self.long_string(input)?),
            marker::TYPED_OBJECT => {
                let inner = self.budget.enter(depth)?;
                let class_name = self.short_string(input)?;
                let properties = self.properties(input, inner, false)?;
                Amf0Value::TypedObject { class_name, properties }
            }
            marker::AVMPLUS => {
                Amf0Value::Avmplus(self.amf3.value(input, &mut self.budget, depth)?)
            }
            // Reserved by the spec; no peer sends them.
            marker::MOVIECLIP | marker::RECORDSET => return Err(AmfError::UnknownMarker(marker)),
            _ => return Err(AmfError::UnknownMarker(marker)),
        };
        Ok(value)
    }

    fn short_string(&self, input: &mut &'a [u8]) -> Result<String, AmfError> {
        let len = usize::from(read_u16(input)?);
        self.string_of_len(input, len)
    }

    fn long_string(&self, input: &mut &'a [u8]) -> Result<String, AmfError> {
        let len = usize::try_from(read_u32(input)?).unwrap_or(usize::MAX);
        self.string_of_len(input, len)
    }

    fn string_of_len(&self, input: &mut &'a [u8], len: usize) -> Result<String, AmfError> {
        self.budget.check_len(len)?;
        self.budget.text(take(input, len)?)
    }

    /// Reads `key value` pairs up to the object-end marker (`00 00 09`). With `end_optional`,
    /// the end of the input also ends the list (the ECMA array tolerance of the module doc).
    fn properties(
        &mut self,
        input: &mut &'a [u8],
        depth: usize,
        end_optional: bool,
    ) -> Result<Vec<(String, Amf0Value)>, AmfError> {
        let mut props = Vec::new();
        loop {
            if end_optional && input.is_empty() {
                return Ok(props);
            }
            let key_len = usize::from(read_u16(input)?);
            if key_len == 0 {
                match input.split_first() {
                    Some((&marker::OBJECT_END, rest)) => {
                        *input = rest;
                        return Ok(props);
                    }
                    None if end_optional => return Ok(props),
                    None => return Err(AmfError::Truncated),
                    Some(_) => {}
                }
            }
            let key = self.string_of_len(input, key_len)?;
            let value = self.value(input, depth)?;
            props.push((key, value));
        }
    }

    fn strict_array(
        &mut self,
        input: &mut &'a [u8],
        depth: usize,
    ) -> Result<Vec<Amf0Value>, AmfError> {
        let count = usize::try_from(read_u32(input)?).unwrap_or(usize::MAX);
        // Each element takes at least its marker byte and one element of the budget, so a count
        // beyond either fails here, before it can size an allocation.
        if count > input.len() {
            return Err(AmfError::Truncated);
        }
        if count > self.budget.elements_left() {
            return Err(AmfError::TooManyElements);
        }
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(self.value(input, depth)?);
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amf3::tests::{arb_value as arb_amf3, same, shape as amf3_shape, Shape};
    use proptest::prelude::*;
    use Amf0Value::*;

    /// What ffmpeg 5.1 (Lavf59.27.100) sent as its connect command when publishing to
    /// rtmp://127.0.0.1:33211/live/stream1, recorded by a scripted server right after the
    /// handshake: one message on chunk stream 3 with the default 128-byte chunks.
    const FFMPEG_CONNECT_CHUNKS: &[u8] = include_bytes!("../tests/data/ffmpeg_connect_chunks.bin");
    /// The AMF0 body of that message, with the chunk headers taken out.
    const FFMPEG_CONNECT: &[u8] = include_bytes!("../tests/data/ffmpeg_connect_amf0.bin");
    /// The `@setDataFrame onMetaData` data message (type 18) the same ffmpeg sent after
    /// `publish`, with H.264 320x240 at 25 fps and AAC stereo 44.1 kHz.
    const FFMPEG_SET_DATA_FRAME: &[u8] =
        include_bytes!("../tests/data/amf0_ffmpeg_setdataframe.bin");

    fn limits() -> AmfLimits {
        AmfLimits::default()
    }

    fn enc_all(values: &[Amf0Value]) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_all(values, &mut out);
        out.to_vec()
    }

    fn enc(value: &Amf0Value) -> Vec<u8> {
        enc_all(std::slice::from_ref(value))
    }

    fn s(text: &str) -> Amf0Value {
        Amf0Value::string(text)
    }

    fn n(number: f64) -> Amf0Value {
        Number(number)
    }

    fn props(pairs: Vec<(&str, Amf0Value)>) -> Vec<(std::string::String, Amf0Value)> {
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// Whether `got` is what a prefix of `want`'s encoding may decode to: `want` itself, or,
    /// where the prefix ends inside a trailing ECMA array, that array's leading properties
    /// (the tolerance for a missing end marker). Anything else would be a wrong value.
    fn is_truncation(got: &Amf0Value, want: &Amf0Value) -> bool {
        match (got, want) {
            (EcmaArray(got), EcmaArray(want)) => {
                got.len() <= want.len()
                    && got.iter().zip(want).enumerate().all(|(i, ((gk, gv), (wk, wv)))| {
                        gk == wk
                            && if i + 1 == got.len() { is_truncation(gv, wv) } else { gv == wv }
                    })
            }
            _ => got == want,
        }
    }

    /// The same for a list of top-level values, where a prefix may also end between values.
    fn is_truncation_list(got: &[Amf0Value], want: &[Amf0Value]) -> bool {
        got.len() <= want.len()
            && got.iter().zip(want).enumerate().all(|(i, (g, w))| {
                if i + 1 == got.len() {
                    is_truncation(g, w)
                } else {
                    g == w
                }
            })
    }

    /// `bytes` decodes to `want`, and every strict prefix fails or decodes to an honest
    /// truncation of `want`, never to some other value.
    fn check_decode(bytes: &[u8], want: &[Amf0Value]) {
        assert_eq!(decode(bytes, &limits()).as_deref(), Ok(want), "decoding {bytes:02x?}");
        for cut in 0..bytes.len() {
            if let Ok(got) = decode(&bytes[..cut], &limits()) {
                assert!(is_truncation_list(&got, want), "prefix {cut} decoded to {got:?}");
            }
        }
    }

    /// One value: [`check_decode`], [`decode_one`] consumes exactly `bytes`, and on every strict
    /// prefix it fails without moving its input (or gives an honest ECMA array truncation).
    fn check_value(bytes: &[u8], want: &Amf0Value) {
        check_decode(bytes, std::slice::from_ref(want));
        let mut rest = bytes;
        assert_eq!(decode_one(&mut rest, &limits()).as_ref(), Ok(want));
        assert!(rest.is_empty());
        for cut in 0..bytes.len() {
            let mut rest = &bytes[..cut];
            match decode_one(&mut rest, &limits()) {
                Err(_) => assert_eq!(rest.len(), cut, "input moved on error"),
                Ok(got) => assert!(is_truncation(&got, want), "prefix {cut} decoded to {got:?}"),
            }
        }
    }

    /// [`check_value`], and `want` encodes back to exactly `bytes`.
    fn golden(bytes: &[u8], want: &Amf0Value) {
        check_value(bytes, want);
        assert_eq!(enc(want), bytes, "encoding {want:?}");
        assert_eq!(encoded_len(want), bytes.len());
    }

    #[test]
    fn golden_scalars() {
        golden(&[0x00, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0], &n(1.0));
        golden(&[0x00, 0xc0, 0x09, 0x21, 0xfb, 0x54, 0x44, 0x2d, 0x18], &n(-std::f64::consts::PI));
        golden(&[0x00, 0x80, 0, 0, 0, 0, 0, 0, 0], &n(-0.0));
        golden(&[0x01, 0x01], &Boolean(true));
        golden(&[0x01, 0x00], &Boolean(false));
        golden(b"\x02\x00\x05hello", &s("hello"));
        golden(b"\x02\x00\x00", &s(""));
        golden(b"\x02\x00\x03\xe2\x82\xac", &s("\u{20ac}"));
        golden(&[0x05], &Null);
        golden(&[0x06], &Undefined);
        golden(&[0x07, 0x01, 0x02], &Reference(0x0102));
        // 2^40 ms, UTC-8 (-480 minutes).
        golden(
            &[0x0b, 0x42, 0x70, 0, 0, 0, 0, 0, 0, 0xfe, 0x20],
            &Date { millis: 1_099_511_627_776.0, timezone: -480 },
        );
        golden(b"\x0c\x00\x00\x00\x03abc", &LongString("abc".into()));
        golden(b"\x11\x06\x07abc", &Avmplus(Amf3Value::String("abc".into())));
        golden(b"\x11\x04\x7f", &Avmplus(Amf3Value::Integer(127)));
    }

    #[test]
    fn golden_containers() {
        golden(b"\x03\x00\x00\x09", &Object(vec![]));
        golden(
            b"\x03\x00\x03app\x02\x00\x04live\x00\x01n\x00\x3f\xf0\0\0\0\0\0\0\x00\x00\x09",
            &Amf0Value::object([("app", s("live")), ("n", n(1.0))]),
        );
        golden(
            b"\x03\x00\x01o\x03\x00\x01a\x05\x00\x00\x09\x00\x00\x09",
            &Amf0Value::object([("o", Amf0Value::object([("a", Null)]))]),
        );
        golden(
            b"\x08\x00\x00\x00\x01\x00\x01a\x00\x3f\xf0\0\0\0\0\0\0\x00\x00\x09",
            &EcmaArray(props(vec![("a", n(1.0))])),
        );
        golden(b"\x08\x00\x00\x00\x00\x00\x00\x09", &EcmaArray(vec![]));
        golden(
            b"\x0a\x00\x00\x00\x02\x00\x3f\xf0\0\0\0\0\0\0\x02\x00\x01x",
            &StrictArray(vec![n(1.0), s("x")]),
        );
        golden(b"\x0a\x00\x00\x00\x00", &StrictArray(vec![]));
        golden(
            b"\x10\x00\x03Foo\x00\x01x\x05\x00\x00\x09",
            &TypedObject { class_name: "Foo".into(), properties: props(vec![("x", Null)]) },
        );
        // A property named "": the empty key is followed by a value, not by 0x09.
        golden(b"\x03\x00\x00\x05\x00\x00\x09", &Amf0Value::object([("", Null)]));
    }

    /// Inputs that decode but are not what the encoder writes.
    #[test]
    fn non_canonical_input() {
        check_value(&[0x01, 0x02], &Boolean(true));
        check_value(&[0x0d], &Undefined);
        check_value(b"\x0f\x00\x00\x00\x04<a/>", &s("<a/>"));
        check_value(b"\x02\x00\x02\xff\xfe", &s("\u{fffd}\u{fffd}"));
        // A long string holding a short text stays a long string.
        check_value(b"\x0c\x00\x00\x00\x00", &LongString(std::string::String::new()));
    }

    #[test]
    fn ecma_array_count_is_advisory() {
        let two = EcmaArray(props(vec![("a", Null), ("b", Null)]));
        let body = b"\x00\x01a\x05\x00\x01b\x05\x00\x00\x09";
        for count in [0u32, 1, 2, 99, u32::MAX] {
            let bytes = [&[0x08][..], &count.to_be_bytes(), body].concat();
            check_value(&bytes, &two);
        }
    }

    #[test]
    fn ecma_array_end_marker_may_be_missing_at_end_of_input() {
        let one = EcmaArray(props(vec![("a", Null)]));
        check_value(b"\x08\x00\x00\x00\x01\x00\x01a\x05", &one);
        check_value(b"\x08\x00\x00\x00\x01\x00\x01a\x05\x00\x00", &one);
        // Only at the end: here the next value's bytes are read as a key, which fails.
        assert!(decode(b"\x08\x00\x00\x00\x01\x00\x01a\x05\x02\x00\x01b", &limits()).is_err());
        // Objects and typed objects must be terminated.
        assert_eq!(decode(b"\x03\x00\x01a\x05", &limits()), Err(AmfError::Truncated));
        assert_eq!(decode(b"\x03\x00\x01a\x05\x00\x00", &limits()), Err(AmfError::Truncated));
        assert_eq!(decode(b"\x10\x00\x01T\x00\x00", &limits()), Err(AmfError::Truncated));
    }

    #[test]
    fn refused_markers() {
        for marker in [0x04, 0x0e, 0x12, 0x80, 0xff] {
            assert_eq!(decode(&[marker], &limits()), Err(AmfError::UnknownMarker(marker)));
        }
        let end = Err(AmfError::Malformed("object-end marker outside an object"));
        assert_eq!(decode(&[0x09], &limits()), end);
        assert_eq!(decode(b"\x05\x00\x00\x09", &limits()), Err(AmfError::Truncated));
    }

    #[test]
    fn ffmpeg_connect_golden() {
        // Take the chunk headers out: a 12-byte fmt-0 header (csid 3, type 0x14 command, message
        // stream 0), then a one-byte fmt-3 header (0xc3) before every further 128 bytes.
        let header = &FFMPEG_CONNECT_CHUNKS[..12];
        assert_eq!(header[0], 0x03);
        assert_eq!(header[7], 0x14);
        let len =
            usize::from(header[4]) << 16 | usize::from(header[5]) << 8 | usize::from(header[6]);
        let mut body = Vec::new();
        for (i, chunk) in FFMPEG_CONNECT_CHUNKS[12..]
            .split(|_| false)
            .flat_map(|all| std::iter::once(&all[..128]).chain(all[128..].chunks(129)))
            .enumerate()
        {
            let chunk = if i == 0 {
                chunk
            } else {
                assert_eq!(chunk[0], 0xc3);
                &chunk[1..]
            };
            body.extend_from_slice(chunk);
        }
        assert_eq!(body.len(), len);
        assert_eq!(body, FFMPEG_CONNECT);

        let want = [
            s("connect"),
            n(1.0),
            Amf0Value::object([
                ("app", s("live")),
                ("type", s("nonprivate")),
                ("flashVer", s("FMLE/3.0 (compatible; Lavf59.27.100)")),
                ("tcUrl", s("rtmp://127.0.0.1:33211/live")),
            ]),
        ];
        check_decode(FFMPEG_CONNECT, &want);
        assert_eq!(enc_all(&want), FFMPEG_CONNECT);
        let values = decode(FFMPEG_CONNECT, &limits()).unwrap();
        assert_eq!(
            values[2].get("tcUrl").and_then(Amf0Value::as_str),
            Some("rtmp://127.0.0.1:33211/live")
        );
    }

    /// The commands the same ffmpeg sent after connect, in order, as recorded.
    #[test]
    fn ffmpeg_publish_commands_golden() {
        let cases: [(&[u8], Vec<Amf0Value>); 4] = [
            (
                b"\x02\x00\x0dreleaseStream\x00\x40\x00\0\0\0\0\0\0\x05\x02\x00\x07stream1",
                vec![s("releaseStream"), n(2.0), Null, s("stream1")],
            ),
            (
                b"\x02\x00\x09FCPublish\x00\x40\x08\0\0\0\0\0\0\x05\x02\x00\x07stream1",
                vec![s("FCPublish"), n(3.0), Null, s("stream1")],
            ),
            (b"\x02\x00\x0ccreateStream\x00\x40\x10\0\0\0\0\0\0\x05", vec![s("createStream"), n(4.0), Null]),
            (
                b"\x02\x00\x07publish\x00\x40\x14\0\0\0\0\0\0\x05\x02\x00\x07stream1\x02\x00\x04live",
                vec![s("publish"), n(5.0), Null, s("stream1"), s("live")],
            ),
        ];
        for (bytes, want) in cases {
            check_decode(bytes, &want);
            assert_eq!(enc_all(&want), bytes);
        }
    }

    #[test]
    fn ffmpeg_set_data_frame_golden() {
        let want = [
            s("@setDataFrame"),
            s("onMetaData"),
            EcmaArray(props(vec![
                ("duration", n(3.0)),
                ("width", n(320.0)),
                ("height", n(240.0)),
                ("videodatarate", n(0.0)),
                ("framerate", n(25.0)),
                ("videocodecid", n(7.0)),
                ("audiodatarate", n(125.0)),
                ("audiosamplerate", n(44100.0)),
                ("audiosamplesize", n(16.0)),
                ("stereo", Boolean(true)),
                ("audiocodecid", n(10.0)),
                ("encoder", s("Lavf59.27.100")),
                ("filesize", n(0.0)),
            ])),
        ];
        check_decode(FFMPEG_SET_DATA_FRAME, &want);
        // ffmpeg's count (13) is right here, so re-encoding reproduces the bytes exactly.
        assert_eq!(enc_all(&want), FFMPEG_SET_DATA_FRAME);
    }

    /// The connect an OBS-like librtmp publisher sends, built by hand from librtmp's
    /// `SendConnectPacket` order: app, type, flashVer, swfUrl, tcUrl.
    #[test]
    fn obs_style_connect_golden() {
        let bytes: Vec<u8> = [
            &b"\x02\x00\x07connect"[..],
            b"\x00\x3f\xf0\x00\x00\x00\x00\x00\x00",
            b"\x03",
            b"\x00\x03app\x02\x00\x04live",
            b"\x00\x04type\x02\x00\x0anonprivate",
            b"\x00\x08flashVer\x02\x00\x1fFMLE/3.0 (compatible; FMSc/1.0)",
            b"\x00\x06swfUrl\x02\x00\x1artmp://localhost:1935/live",
            b"\x00\x05tcUrl\x02\x00\x1artmp://localhost:1935/live",
            b"\x00\x00\x09",
        ]
        .concat();
        let want = [
            s("connect"),
            n(1.0),
            Amf0Value::object([
                ("app", s("live")),
                ("type", s("nonprivate")),
                ("flashVer", s("FMLE/3.0 (compatible; FMSc/1.0)")),
                ("swfUrl", s("rtmp://localhost:1935/live")),
                ("tcUrl", s("rtmp://localhost:1935/live")),
            ]),
        ];
        check_decode(&bytes, &want);
        assert_eq!(enc_all(&want), bytes);
    }

    /// AVM+ values of one message share AMF3 reference tables: the second switch refers to the
    /// string of the first. `decode_one` alone has no table to resolve it against.
    #[test]
    fn avmplus_values_share_reference_tables() {
        let bytes = b"\x11\x06\x07abc\x11\x06\x00";
        let abc = Avmplus(Amf3Value::String("abc".into()));
        check_decode(bytes, &[abc.clone(), abc]);
        let mut second = &bytes[6..];
        assert_eq!(decode_one(&mut second, &limits()), Err(AmfError::BadReference(0)));
    }

    #[test]
    fn long_strings_are_written_as_long_strings() {
        let text = "x".repeat(70_000);
        let bytes = enc(&s(&text));
        assert_eq!(&bytes[..5], [0x0c, 0x00, 0x01, 0x11, 0x70]);
        assert_eq!(bytes.len(), encoded_len(&s(&text)));
        let limits = AmfLimits { max_string_len: 100_000, ..limits() };
        assert_eq!(decode(&bytes, &limits), Ok(vec![LongString(text)]));
        assert_eq!(enc(&s(&"x".repeat(65_535)))[..3], [0x02, 0xff, 0xff]);
    }

    #[test]
    fn keys_too_long_for_the_wire_are_cut_at_a_character_boundary() {
        // 32 768 two-byte characters: 65 536 bytes, one over; cut to 65 534.
        let key = "\u{e9}".repeat(32_768);
        let value = Amf0Value::object([(key.as_str(), Null)]);
        let bytes = enc(&value);
        assert_eq!(bytes.len(), encoded_len(&value));
        let cut = "\u{e9}".repeat(32_767);
        assert_eq!(decode(&bytes, &limits()), Ok(vec![Amf0Value::object([(cut.as_str(), Null)])]));
    }

    fn run_with_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        // Far less than a thread's usual 2 MiB: the limits, not the stack size, must stop it.
        std::thread::Builder::new().stack_size(256 * 1024).spawn(f).unwrap().join().unwrap()
    }

    #[test]
    fn nesting_bombs_are_too_deep() {
        let bombs: [Vec<u8>; 5] = [
            b"\x03\x00\x01a".repeat(10_000),
            b"\x0a\x00\x00\x00\x01".repeat(10_000),
            b"\x08\x00\x00\x00\x01\x00\x01a".repeat(10_000),
            b"\x10\x00\x00\x00\x01a".repeat(10_000),
            [&b"\x11"[..], &b"\x09\x03\x01".repeat(10_000)].concat(),
        ];
        for bomb in bombs {
            let got = run_with_small_stack(move || decode(&bomb, &AmfLimits::default()));
            assert_eq!(got, Err(AmfError::TooDeep));
        }
        // The limit is exact: max_depth containers nest, one more does not.
        let nested = |depth: usize| [b"\x0a\x00\x00\x00\x01".repeat(depth), vec![0x05]].concat();
        let limits = AmfLimits { max_depth: 4, ..limits() };
        assert!(decode(&nested(4), &limits).is_ok());
        assert_eq!(decode(&nested(5), &limits), Err(AmfError::TooDeep));
        // And the deepest default nesting fits on the small stack.
        let deepest = nested(AmfLimits::default().max_depth);
        assert!(run_with_small_stack(move || decode(&deepest, &AmfLimits::default())).is_ok());
    }

    #[test]
    fn declared_lengths_do_not_allocate() {
        // A 4 GiB long string declared in five bytes.
        let long = b"\x0c\xff\xff\xff\xffab";
        assert_eq!(decode(long, &limits()), Err(AmfError::StringTooLong(u32::MAX as usize)));
        let unlimited = AmfLimits { max_string_len: usize::MAX, ..limits() };
        assert_eq!(decode(long, &unlimited), Err(AmfError::Truncated));
        assert_eq!(decode(b"\x0f\xff\xff\xff\xff", &unlimited), Err(AmfError::Truncated));
        assert_eq!(decode(b"\x02\xff\xffab", &limits()), Err(AmfError::Truncated));
        // 2^32 - 1 strict array elements on a 10-byte input fails at once, limits or not.
        let array = b"\x0a\xff\xff\xff\xff\x05\x05\x05\x05\x05";
        let unlimited = AmfLimits { max_elements: usize::MAX, max_depth: usize::MAX, ..unlimited };
        assert_eq!(decode(array, &unlimited), Err(AmfError::Truncated));
        assert_eq!(decode(array, &limits()), Err(AmfError::Truncated));
    }

    #[test]
    fn string_limit_applies_everywhere() {
        let tight = AmfLimits { max_string_len: 4, ..limits() };
        assert!(decode(b"\x02\x00\x04abcd", &tight).is_ok());
        assert_eq!(decode(b"\x02\x00\x05abcde", &tight), Err(AmfError::StringTooLong(5)));
        assert_eq!(
            decode(b"\x03\x00\x05abcde\x05\x00\x00\x09", &tight),
            Err(AmfError::StringTooLong(5))
        );
        assert_eq!(
            decode(b"\x10\x00\x05abcde\x00\x00\x09", &tight),
            Err(AmfError::StringTooLong(5))
        );
        assert_eq!(decode(b"\x0f\x00\x00\x00\x05abcde", &tight), Err(AmfError::StringTooLong(5)));
        // Two invalid bytes become two 3-byte replacement characters.
        assert_eq!(decode(b"\x02\x00\x02\xff\xff", &tight), Err(AmfError::StringTooLong(6)));
    }

    #[test]
    fn element_budget_covers_the_whole_call() {
        let limits = AmfLimits { max_elements: 100, ..limits() };
        let nulls = [0x05; 101];
        assert_eq!(decode(&nulls[..100], &limits).map(|v| v.len()), Ok(100));
        assert_eq!(decode(&nulls, &limits), Err(AmfError::TooManyElements));
        // The strict array itself is one element, then 100 more.
        let array = [&b"\x0a\x00\x00\x00\x64"[..], &[0x05; 100]].concat();
        assert_eq!(decode(&array, &limits), Err(AmfError::TooManyElements));
        // A declared count over the budget fails before reading the elements.
        let declared = [&b"\x0a\x00\x00\x00\xc8"[..], &[0x05; 200]].concat();
        assert_eq!(decode(&declared, &limits), Err(AmfError::TooManyElements));
        // Default budget against 20 000 empty objects in one message.
        let bomb = b"\x03\x00\x00\x09".repeat(20_000);
        assert_eq!(decode(&bomb, &AmfLimits::default()), Err(AmfError::TooManyElements));
        // AMF3 values draw on the same budget.
        let avm = b"\x11\x01".repeat(51);
        assert_eq!(decode(&avm, &limits), Err(AmfError::TooManyElements));
    }

    fn arb_value() -> impl Strategy<Value = Amf0Value> {
        let leaf = prop_oneof![
            any::<f64>().prop_map(Number),
            any::<bool>().prop_map(Boolean),
            ".{0,12}".prop_map(String),
            ".{0,12}".prop_map(LongString),
            Just(Null),
            Just(Undefined),
            any::<u16>().prop_map(Reference),
            (any::<f64>(), any::<i16>()).prop_map(|(millis, timezone)| Date { millis, timezone }),
            arb_amf3().prop_map(Avmplus),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let props = proptest::collection::vec((".{0,8}", inner.clone()), 0..6);
            prop_oneof![
                props.clone().prop_map(Object),
                props.clone().prop_map(EcmaArray),
                proptest::collection::vec(inner, 0..6).prop_map(StrictArray),
                (".{0,8}", props)
                    .prop_map(|(class_name, properties)| TypedObject { class_name, properties }),
            ]
        })
    }

    fn shape(value: &Amf0Value) -> Shape {
        let mut own = Shape { elements: 1, ..Shape::default() };
        let mut members = Shape::default();
        let properties = |list: &[(std::string::String, Amf0Value)], members: &mut Shape| {
            for (key, value) in list {
                members.longest = members.longest.max(key.len());
                members.add(shape(value));
            }
            members.depth += 1;
        };
        match value {
            String(t) | LongString(t) => own.longest = t.len(),
            Object(list) | EcmaArray(list) => properties(list, &mut members),
            TypedObject { class_name, properties: list } => {
                members.longest = class_name.len();
                properties(list, &mut members);
            }
            StrictArray(items) => {
                items.iter().for_each(|item| members.add(shape(item)));
                members.depth += 1;
            }
            Avmplus(inner) => members.add(amf3_shape(inner)),
            _ => {}
        }
        own.add(members);
        own
    }

    fn check_limits(values: &[Amf0Value], limits: &AmfLimits) {
        let mut total = Shape::default();
        values.iter().for_each(|value| total.add(shape(value)));
        total.check(limits);
    }

    fn small_limits() -> AmfLimits {
        AmfLimits { max_depth: 3, max_string_len: 8, max_elements: 24 }
    }

    proptest! {
        #[test]
        fn round_trip(values in proptest::collection::vec(arb_value(), 0..4)) {
            let bytes = enc_all(&values);
            prop_assert_eq!(values.iter().map(encoded_len).sum::<usize>(), bytes.len());
            let back = decode(&bytes, &limits()).expect("own encoding decodes");
            prop_assert!(same(&back, &values), "{:?} came back as {:?}", values, back);
            prop_assert_eq!(enc_all(&back), bytes);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(prop_oneof![0u8..0x12, any::<u8>()], 0..512)
        ) {
            for limits in [limits(), small_limits()] {
                if let Ok(values) = decode(&bytes, &limits) {
                    check_limits(&values, &limits);
                }
            }
        }

        #[test]
        fn mutated_encodings_never_panic(
            values in proptest::collection::vec(arb_value(), 1..4),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = enc_all(&values);
            for (at, byte) in edits {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            for limits in [limits(), small_limits()] {
                if let Ok(values) = decode(&bytes, &limits) {
                    check_limits(&values, &limits);
                }
            }
        }
    }
}
