//! AMF3 (Adobe "Action Message Format -- AMF 3", 2013), as far as RTMP needs it: the values
//! behind the AVM+ switch in AMF3 command (type 17) and data (type 15) messages.
//!
//! # Decoding
//!
//! Supported: undefined, null, booleans, integer, double, string, XMLDocument, date, array,
//! object (inline or referenced traits, sealed and dynamic members), XML and ByteArray.
//! Externalizable objects need class-specific code and fail with
//! [`AmfError::Malformed`]`("externalizable")`; vectors and dictionaries (0x0d-0x11) fail with
//! [`AmfError::UnknownMarker`]. Sealed and dynamic members both land in
//! [`Amf3Value::Object::properties`], sealed first.
//!
//! AMF3 compresses with three reference tables (strings, objects, traits) that live for one
//! message. A reference is resolved into a copy of the earlier value, because [`Amf3Value`] is a
//! plain tree. Copies are where a small input could turn into a large tree, so they are paid
//! for from the same [`AmfLimits`] as everything else:
//!
//! - A reference to an object, array, date, XML or byte array is resolved by decoding the
//!   earlier value's bytes again, in a mode that adds nothing to the tables. The copy therefore
//!   costs exactly what its values cost, plus one element for the reference itself, and it is
//!   nested where the reference stands, so [`AmfLimits::max_depth`] bounds a chain of references
//!   to references. The tables hold slices of the input, not decoded values: keeping them costs
//!   no memory per value.
//! - Text or bytes copied rather than read in place (a string reference, a member name taken
//!   from referenced traits, anything inside a re-decoded reference) cost one more element per
//!   [`COPY_BYTES_PER_ELEMENT`] bytes. With every value costing at least one element, the
//!   copies one decode call makes stay within a few hundred bytes per element of
//!   [`AmfLimits::max_elements`].
//! - A reference to a value that is still being decoded (a cycle, which a tree cannot hold) is
//!   [`AmfError::Malformed`]; one to an index not yet in its table is
//!   [`AmfError::BadReference`].
//!
//! [`AmfLimits::max_string_len`] also bounds XML and byte arrays.
//!
//! # Encoding
//!
//! [`encode`] writes every value inline and never emits a reference, so the output does not
//! depend on what surrounds it. Anonymous objects whose keys are all non-empty are written as
//! dynamic objects, the way Flash Player writes them; typed objects and any object with an empty
//! key (which would end a dynamic member list) are written with sealed traits. What the format
//! cannot express is adjusted so the output stays valid: an [`Amf3Value::Integer`] outside the
//! 29-bit range is written as a double, associative array entries with an empty key are dropped
//! (the empty key ends the list), and texts, byte arrays and dense arrays are clamped to
//! 2^28 - 1 bytes or elements, the largest length a U29 header holds.

use std::rc::Rc;

use bytes::{BufMut, BytesMut};

use crate::amf0::{read_f64, read_u8, take, truncate_str, AmfError, AmfLimits, Budget};

/// One AMF3 value.
#[derive(Debug, Clone, PartialEq)]
pub enum Amf3Value {
    Undefined,
    Null,
    Boolean(bool),
    /// 29-bit signed integer.
    Integer(i32),
    Double(f64),
    String(String),
    XmlDoc(String),
    Xml(String),
    /// Milliseconds since the Unix epoch.
    Date(f64),
    Array {
        assoc: Vec<(String, Amf3Value)>,
        dense: Vec<Amf3Value>,
    },
    /// An object with its class name (empty for anonymous) and its sealed then dynamic members.
    Object {
        class_name: String,
        properties: Vec<(String, Amf3Value)>,
    },
    ByteArray(Vec<u8>),
}

impl Amf3Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Amf3Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Amf3Value::Double(d) => Some(*d),
            Amf3Value::Integer(i) => Some(f64::from(*i)),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Amf3Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }
}

/// AMF3 type markers (AMF3 spec, section 3.1).
mod marker {
    pub const UNDEFINED: u8 = 0x00;
    pub const NULL: u8 = 0x01;
    pub const FALSE: u8 = 0x02;
    pub const TRUE: u8 = 0x03;
    pub const INTEGER: u8 = 0x04;
    pub const DOUBLE: u8 = 0x05;
    pub const STRING: u8 = 0x06;
    pub const XML_DOC: u8 = 0x07;
    pub const DATE: u8 = 0x08;
    pub const ARRAY: u8 = 0x09;
    pub const OBJECT: u8 = 0x0a;
    pub const XML: u8 = 0x0b;
    pub const BYTE_ARRAY: u8 = 0x0c;
}

/// Copied bytes (see the module doc) that cost one element of [`AmfLimits::max_elements`]. Low
/// enough that a 64 KiB string referenced again and again exhausts the default budget after
/// 16 copies; high enough that the short keys and names AMF3 usually references cost nothing
/// extra.
pub const COPY_BYTES_PER_ELEMENT: usize = 64;

/// Largest length or count a U29 with a low flag bit can carry (2^28 - 1).
const MAX_U28: usize = (1 << 28) - 1;
/// Smallest and largest values of a 29-bit signed integer.
const INT29_MIN: i32 = -(1 << 28);
const INT29_MAX: i32 = (1 << 28) - 1;
/// Most sealed member names a traits header can declare (25 bits).
const MAX_SEALED: usize = (1 << 25) - 1;

/// Decodes one AMF3 value from the front of `input` (the bytes after an AVM+ switch, or an
/// AMF3 data stream) and advances `input` past it. On error `input` is left unchanged.
///
/// The reference tables start empty and end with the call.
pub fn decode_one(input: &mut &[u8], limits: &AmfLimits) -> Result<Amf3Value, AmfError> {
    let mut rest = *input;
    let mut budget = Budget::new(limits);
    let value = Decoder::default().value(&mut rest, &mut budget, 0)?;
    *input = rest;
    Ok(value)
}

/// Appends the AMF3 encoding of `value` to `out`, every part inline (no references).
pub fn encode(value: &Amf3Value, out: &mut BytesMut) {
    match value {
        Amf3Value::Undefined => out.put_u8(marker::UNDEFINED),
        Amf3Value::Null => out.put_u8(marker::NULL),
        Amf3Value::Boolean(false) => out.put_u8(marker::FALSE),
        Amf3Value::Boolean(true) => out.put_u8(marker::TRUE),
        Amf3Value::Integer(i) => match int29_bits(*i) {
            Some(bits) => {
                out.put_u8(marker::INTEGER);
                put_u29(out, bits);
            }
            None => {
                out.put_u8(marker::DOUBLE);
                out.put_f64(f64::from(*i));
            }
        },
        Amf3Value::Double(d) => {
            out.put_u8(marker::DOUBLE);
            out.put_f64(*d);
        }
        Amf3Value::String(s) => {
            out.put_u8(marker::STRING);
            put_text(out, s);
        }
        Amf3Value::XmlDoc(s) => {
            out.put_u8(marker::XML_DOC);
            put_text(out, s);
        }
        Amf3Value::Xml(s) => {
            out.put_u8(marker::XML);
            put_text(out, s);
        }
        Amf3Value::Date(millis) => {
            out.put_u8(marker::DATE);
            put_u29(out, 1);
            out.put_f64(*millis);
        }
        Amf3Value::Array { assoc, dense } => {
            let dense = &dense[..dense.len().min(MAX_U28)];
            out.put_u8(marker::ARRAY);
            put_inline_len(out, dense.len());
            for (key, value) in assoc.iter().filter(|(key, _)| !key.is_empty()) {
                put_text(out, key);
                encode(value, out);
            }
            put_text(out, "");
            for value in dense {
                encode(value, out);
            }
        }
        Amf3Value::Object { class_name, properties } => {
            out.put_u8(marker::OBJECT);
            if is_dynamic_form(class_name, properties) {
                // Inline traits, not externalizable, dynamic, no sealed members.
                put_u29(out, 0b1011);
                put_text(out, "");
                for (key, value) in properties {
                    put_text(out, key);
                    encode(value, out);
                }
                put_text(out, "");
            } else {
                let sealed = &properties[..properties.len().min(MAX_SEALED)];
                // Inline traits, not externalizable, not dynamic, `len` sealed members.
                put_u29(out, (u32::try_from(sealed.len()).unwrap_or(0) << 4) | 0b0011);
                put_text(out, class_name);
                for (key, _) in sealed {
                    put_text(out, key);
                }
                for (_, value) in sealed {
                    encode(value, out);
                }
            }
        }
        Amf3Value::ByteArray(bytes) => {
            let bytes = &bytes[..bytes.len().min(MAX_U28)];
            out.put_u8(marker::BYTE_ARRAY);
            put_inline_len(out, bytes.len());
            out.put_slice(bytes);
        }
    }
}

/// The number of bytes [`encode`] appends for `value`.
pub fn encoded_len(value: &Amf3Value) -> usize {
    match value {
        Amf3Value::Undefined | Amf3Value::Null | Amf3Value::Boolean(_) => 1,
        Amf3Value::Integer(i) => match int29_bits(*i) {
            Some(bits) => 1 + u29_len(bits),
            None => 9,
        },
        Amf3Value::Double(_) => 9,
        Amf3Value::String(s) | Amf3Value::XmlDoc(s) | Amf3Value::Xml(s) => 1 + text_len(s),
        Amf3Value::Date(_) => 10,
        Amf3Value::Array { assoc, dense } => {
            let dense_len = dense.len().min(MAX_U28);
            let assoc: usize = assoc
                .iter()
                .filter(|(key, _)| !key.is_empty())
                .map(|(key, value)| text_len(key) + encoded_len(value))
                .sum();
            let dense: usize = dense.iter().take(dense_len).map(encoded_len).sum();
            1 + inline_len_len(dense_len) + assoc + 1 + dense
        }
        Amf3Value::Object { class_name, properties } => {
            if is_dynamic_form(class_name, properties) {
                let members: usize =
                    properties.iter().map(|(key, value)| text_len(key) + encoded_len(value)).sum();
                1 + 1 + 1 + members + 1
            } else {
                let sealed = &properties[..properties.len().min(MAX_SEALED)];
                let header = u29_len((u32::try_from(sealed.len()).unwrap_or(0) << 4) | 0b0011);
                let members: usize =
                    sealed.iter().map(|(key, value)| text_len(key) + encoded_len(value)).sum();
                1 + header + text_len(class_name) + members
            }
        }
        Amf3Value::ByteArray(bytes) => {
            let len = bytes.len().min(MAX_U28);
            1 + inline_len_len(len) + len
        }
    }
}

/// Whether an object is written with dynamic members: anonymous, and no key is empty (an empty
/// key ends the dynamic member list).
fn is_dynamic_form(class_name: &str, properties: &[(String, Amf3Value)]) -> bool {
    class_name.is_empty() && properties.iter().all(|(key, _)| !key.is_empty())
}

/// The U29 bits of an integer the INTEGER marker can carry, `None` for one that needs a double.
fn int29_bits(i: i32) -> Option<u32> {
    if (INT29_MIN..=INT29_MAX).contains(&i) {
        // Two's complement, cut to 29 bits; the decoder sign-extends bit 28 back.
        Some(u32::from_ne_bytes(i.to_ne_bytes()) & 0x1fff_ffff)
    } else {
        None
    }
}

/// Writes a U29: 7 bits per byte with a continuation bit, except a fourth byte that carries 8.
fn put_u29(out: &mut BytesMut, v: u32) {
    let v = v & 0x1fff_ffff;
    // The `as u8` casts keep the low 8 bits on purpose; each value was masked or shifted to fit.
    if v < 0x80 {
        out.put_u8(v as u8);
    } else if v < 0x4000 {
        out.put_slice(&[((v >> 7) | 0x80) as u8, (v & 0x7f) as u8]);
    } else if v < 0x20_0000 {
        out.put_slice(&[((v >> 14) | 0x80) as u8, ((v >> 7) | 0x80) as u8, (v & 0x7f) as u8]);
    } else {
        out.put_slice(&[
            ((v >> 22) | 0x80) as u8,
            ((v >> 15) | 0x80) as u8,
            ((v >> 8) | 0x80) as u8,
            v as u8,
        ]);
    }
}

fn u29_len(v: u32) -> usize {
    match v & 0x1fff_ffff {
        0..=0x7f => 1,
        0x80..=0x3fff => 2,
        0x4000..=0x1f_ffff => 3,
        _ => 4,
    }
}

/// Writes the U29 header of an inline length: `len << 1 | 1`.
fn put_inline_len(out: &mut BytesMut, len: usize) {
    put_u29(out, inline_len_bits(len));
}

fn inline_len_len(len: usize) -> usize {
    u29_len(inline_len_bits(len))
}

fn inline_len_bits(len: usize) -> u32 {
    (u32::try_from(len.min(MAX_U28)).unwrap_or(0) << 1) | 1
}

/// Writes a UTF-8-vr inline: header then bytes.
fn put_text(out: &mut BytesMut, s: &str) {
    let s = truncate_str(s, MAX_U28);
    put_inline_len(out, s.len());
    out.put_slice(s.as_bytes());
}

fn text_len(s: &str) -> usize {
    let len = truncate_str(s, MAX_U28).len();
    inline_len_len(len) + len
}

/// Reads a U29 (AMF3 spec, section 1.3.1). At most 29 bits, so it cannot overflow a `u32`.
fn read_u29(input: &mut &[u8]) -> Result<u32, AmfError> {
    let mut v = 0u32;
    for _ in 0..3 {
        let b = read_u8(input)?;
        v = (v << 7) | u32::from(b & 0x7f);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Ok((v << 8) | u32::from(read_u8(input)?))
}

/// A U29 with its low flag bit split off: `(flag, rest)`.
fn split_flag(u29: u32) -> (bool, u32) {
    (u29 & 1 == 1, u29 >> 1)
}

/// A table index or length from a U29 (at most 2^28), as a `usize`.
fn to_usize(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Class traits: the shape shared by objects of one class. Externalizable traits are refused
/// when read, so they never reach the table.
#[derive(Debug)]
struct Traits<'a> {
    class_name: &'a [u8],
    sealed: Vec<&'a [u8]>,
    dynamic: bool,
}

/// The reference tables of one AMF3 context: one message, possibly several AVM+ switches.
///
/// Entries are slices of the input: strings as their UTF-8 bytes, and objects (everything the
/// object table holds: objects, arrays, dates, XML, byte arrays) as the bytes of their whole
/// encoding, which a reference decodes again (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct Decoder<'a> {
    strings: Vec<&'a [u8]>,
    /// `None` while the value is still being decoded: a reference to it would be a cycle.
    objects: Vec<Option<&'a [u8]>>,
    traits: Vec<Rc<Traits<'a>>>,
    /// Re-decoding a referenced value: add nothing to the tables and pay for copied bytes.
    replaying: bool,
}

impl<'a> Decoder<'a> {
    /// Decodes the value at the front of `input`, charging `budget`; `depth` is the number of
    /// containers around it.
    pub(crate) fn value(
        &mut self,
        input: &mut &'a [u8],
        budget: &mut Budget,
        depth: usize,
    ) -> Result<Amf3Value, AmfError> {
        let start = *input;
        let marker = read_u8(input)?;
        budget.charge(1)?;
        let value = match marker {
            marker::UNDEFINED => Amf3Value::Undefined,
            marker::NULL => Amf3Value::Null,
            marker::FALSE => Amf3Value::Boolean(false),
            marker::TRUE => Amf3Value::Boolean(true),
            marker::INTEGER => {
                // Sign-extend bit 28: shift it up to bit 31, then arithmetic-shift back.
                let bits = read_u29(input)? << 3;
                Amf3Value::Integer(i32::from_ne_bytes(bits.to_ne_bytes()) >> 3)
            }
            marker::DOUBLE => Amf3Value::Double(read_f64(input)?),
            marker::STRING => Amf3Value::String(self.string(input, budget)?),
            marker::XML_DOC
            | marker::DATE
            | marker::ARRAY
            | marker::OBJECT
            | marker::XML
            | marker::BYTE_ARRAY => {
                let (inline, rest) = split_flag(read_u29(input)?);
                if !inline {
                    return self.resolve(rest, budget, depth);
                }
                let slot = self.reserve_object();
                let value = self.complex(marker, rest, input, budget, depth)?;
                if let Some(entry) = slot.and_then(|slot| self.objects.get_mut(slot)) {
                    let consumed = start.len() - input.len();
                    *entry = start.get(..consumed);
                }
                value
            }
            _ => return Err(AmfError::UnknownMarker(marker)),
        };
        Ok(value)
    }

    /// The body of an inline object-table value whose U29 header, flag removed, is `header`.
    fn complex(
        &mut self,
        marker: u8,
        header: u32,
        input: &mut &'a [u8],
        budget: &mut Budget,
        depth: usize,
    ) -> Result<Amf3Value, AmfError> {
        match marker {
            marker::XML_DOC => Ok(Amf3Value::XmlDoc(self.inline_text(header, input, budget)?)),
            marker::XML => Ok(Amf3Value::Xml(self.inline_text(header, input, budget)?)),
            // The rest of a date's header is unused.
            marker::DATE => Ok(Amf3Value::Date(read_f64(input)?)),
            marker::BYTE_ARRAY => {
                let bytes = self.inline_bytes(header, input, budget)?;
                Ok(Amf3Value::ByteArray(bytes.to_vec()))
            }
            marker::ARRAY => self.array(to_usize(header), input, budget, depth),
            _ => self.object(header, input, budget, depth),
        }
    }

    /// Takes an object-table slot for a value about to be decoded, unless replaying.
    fn reserve_object(&mut self) -> Option<usize> {
        if self.replaying {
            return None;
        }
        self.objects.push(None);
        Some(self.objects.len() - 1)
    }

    /// Resolves an object reference by decoding the referenced bytes again where it stands.
    fn resolve(
        &mut self,
        index: u32,
        budget: &mut Budget,
        depth: usize,
    ) -> Result<Amf3Value, AmfError> {
        let mut bytes = match self.objects.get(to_usize(index)) {
            Some(Some(bytes)) => *bytes,
            Some(None) => return Err(AmfError::Malformed("AMF3 reference to an enclosing value")),
            None => return Err(AmfError::BadReference(index)),
        };
        let was_replaying = std::mem::replace(&mut self.replaying, true);
        let value = self.value(&mut bytes, budget, depth);
        self.replaying = was_replaying;
        value
    }

    /// `len` bytes read in place; when replaying they are a copy, and charged for.
    fn inline_bytes(
        &mut self,
        len: u32,
        input: &mut &'a [u8],
        budget: &mut Budget,
    ) -> Result<&'a [u8], AmfError> {
        let len = to_usize(len);
        budget.check_len(len)?;
        let bytes = take(input, len)?;
        if self.replaying {
            budget.charge(len / COPY_BYTES_PER_ELEMENT)?;
        }
        Ok(bytes)
    }

    fn inline_text(
        &mut self,
        len: u32,
        input: &mut &'a [u8],
        budget: &mut Budget,
    ) -> Result<String, AmfError> {
        let bytes = self.inline_bytes(len, input, budget)?;
        budget.text(bytes)
    }

    /// Reads a UTF-8-vr: inline (and then remembered, unless empty) or a string reference.
    fn string_bytes(
        &mut self,
        input: &mut &'a [u8],
        budget: &mut Budget,
    ) -> Result<&'a [u8], AmfError> {
        let (inline, rest) = split_flag(read_u29(input)?);
        if !inline {
            let bytes = *self.strings.get(to_usize(rest)).ok_or(AmfError::BadReference(rest))?;
            budget.charge(bytes.len() / COPY_BYTES_PER_ELEMENT)?;
            return Ok(bytes);
        }
        let bytes = self.inline_bytes(rest, input, budget)?;
        // The empty string is never sent by reference, so it takes no index.
        if !self.replaying && !bytes.is_empty() {
            self.strings.push(bytes);
        }
        Ok(bytes)
    }

    fn string(&mut self, input: &mut &'a [u8], budget: &mut Budget) -> Result<String, AmfError> {
        let bytes = self.string_bytes(input, budget)?;
        budget.text(bytes)
    }

    fn array(
        &mut self,
        dense_len: usize,
        input: &mut &'a [u8],
        budget: &mut Budget,
        depth: usize,
    ) -> Result<Amf3Value, AmfError> {
        let inner = budget.enter(depth)?;
        let mut assoc = Vec::new();
        loop {
            let key = self.string_bytes(input, budget)?;
            if key.is_empty() {
                break;
            }
            let key = budget.text(key)?;
            assoc.push((key, self.value(input, budget, inner)?));
        }
        // Each element takes at least one byte and one element of the budget, so a count beyond
        // either fails here, before it can size an allocation.
        if dense_len > input.len() {
            return Err(AmfError::Truncated);
        }
        if dense_len > budget.elements_left() {
            return Err(AmfError::TooManyElements);
        }
        let mut dense = Vec::with_capacity(dense_len);
        for _ in 0..dense_len {
            dense.push(self.value(input, budget, inner)?);
        }
        Ok(Amf3Value::Array { assoc, dense })
    }

    /// An object whose U29O header, inline flag removed, is `header`.
    fn object(
        &mut self,
        header: u32,
        input: &mut &'a [u8],
        budget: &mut Budget,
        depth: usize,
    ) -> Result<Amf3Value, AmfError> {
        let inner = budget.enter(depth)?;
        let (traits_inline, rest) = split_flag(header);
        let traits = if traits_inline {
            self.inline_traits(rest, input, budget)?
        } else {
            let traits = self
                .traits
                .get(to_usize(rest))
                .map(Rc::clone)
                .ok_or(AmfError::BadReference(rest))?;
            // The names of referenced traits are copies of bytes read earlier.
            let copied = traits.sealed.iter().map(|name| name.len() / COPY_BYTES_PER_ELEMENT);
            budget.charge(traits.class_name.len() / COPY_BYTES_PER_ELEMENT)?;
            budget.charge(copied.fold(0, usize::saturating_add))?;
            traits
        };
        // Each sealed member's value takes at least one byte and one element.
        let sealed_len = traits.sealed.len();
        if sealed_len > input.len() {
            return Err(AmfError::Truncated);
        }
        if sealed_len > budget.elements_left() {
            return Err(AmfError::TooManyElements);
        }
        let class_name = budget.text(traits.class_name)?;
        let mut properties = Vec::with_capacity(sealed_len);
        for name in &traits.sealed {
            let name = budget.text(name)?;
            properties.push((name, self.value(input, budget, inner)?));
        }
        if traits.dynamic {
            loop {
                let key = self.string_bytes(input, budget)?;
                if key.is_empty() {
                    break;
                }
                let key = budget.text(key)?;
                properties.push((key, self.value(input, budget, inner)?));
            }
        }
        Ok(Amf3Value::Object { class_name, properties })
    }

    /// Reads inline traits (`header` is the U29O with its two low flags removed) and remembers
    /// them in the traits table, unless replaying (they are in it already).
    fn inline_traits(
        &mut self,
        header: u32,
        input: &mut &'a [u8],
        budget: &mut Budget,
    ) -> Result<Rc<Traits<'a>>, AmfError> {
        if header & 1 == 1 {
            return Err(AmfError::Malformed("externalizable"));
        }
        let dynamic = header & 0b10 == 0b10;
        let sealed_len = to_usize(header >> 2);
        let class_name = self.string_bytes(input, budget)?;
        // Each name takes at least one byte.
        if sealed_len > input.len() {
            return Err(AmfError::Truncated);
        }
        let mut sealed = Vec::with_capacity(sealed_len);
        for _ in 0..sealed_len {
            sealed.push(self.string_bytes(input, budget)?);
        }
        let traits = Rc::new(Traits { class_name, sealed, dynamic });
        if !self.replaying {
            self.traits.push(Rc::clone(&traits));
        }
        Ok(traits)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use Amf3Value::*;

    fn limits() -> AmfLimits {
        AmfLimits::default()
    }

    fn enc(value: &Amf3Value) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(value, &mut out);
        out.to_vec()
    }

    fn s(text: &str) -> Amf3Value {
        String(text.into())
    }

    fn obj(class_name: &str, properties: Vec<(&str, Amf3Value)>) -> Amf3Value {
        Object {
            class_name: class_name.into(),
            properties: properties.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        }
    }

    fn dense(values: Vec<Amf3Value>) -> Amf3Value {
        Array { assoc: vec![], dense: values }
    }

    /// 2^40, whose double is `42 70 00 00 00 00 00 00`.
    const MILLIS: f64 = 1_099_511_627_776.0;

    fn dec(bytes: &[u8], limits: &AmfLimits) -> Result<Amf3Value, AmfError> {
        let mut rest = bytes;
        let value = decode_one(&mut rest, limits)?;
        assert!(rest.is_empty(), "{} bytes left after {value:?}", rest.len());
        Ok(value)
    }

    /// `bytes` decodes to `want` consuming everything, and every strict prefix fails without
    /// moving the input. AMF3 has no end-of-input tolerance, so no prefix may succeed.
    fn check(bytes: &[u8], want: &Amf3Value) {
        assert_eq!(dec(bytes, &limits()).as_ref(), Ok(want), "decoding {bytes:02x?}");
        for cut in 0..bytes.len() {
            let mut rest = &bytes[..cut];
            let got = decode_one(&mut rest, &limits());
            assert!(got.is_err(), "prefix {cut} of {bytes:02x?} decoded to {got:?}");
            assert_eq!(rest.len(), cut, "input moved on error");
        }
    }

    /// [`check`], and `want` encodes back to exactly `bytes`.
    fn golden(bytes: &[u8], want: &Amf3Value) {
        check(bytes, want);
        assert_eq!(enc(want), bytes, "encoding {want:?}");
        assert_eq!(encoded_len(want), bytes.len());
    }

    #[test]
    fn golden_scalars() {
        golden(&[0x00], &Undefined);
        golden(&[0x01], &Null);
        golden(&[0x02], &Boolean(false));
        golden(&[0x03], &Boolean(true));
        golden(&[0x05, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0], &Double(1.0));
        golden(
            &[0x05, 0xc0, 0x09, 0x21, 0xfb, 0x54, 0x44, 0x2d, 0x18],
            &Double(-std::f64::consts::PI),
        );
        golden(b"\x06\x07abc", &s("abc"));
        golden(b"\x06\x01", &s(""));
        golden(b"\x06\x07\xe2\x82\xac", &s("\u{20ac}"));
        golden(b"\x07\x09<a/>", &XmlDoc("<a/>".into()));
        golden(b"\x0b\x09<a/>", &Xml("<a/>".into()));
        golden(&[0x08, 0x01, 0x42, 0x70, 0, 0, 0, 0, 0, 0], &Date(MILLIS));
        golden(&[0x0c, 0x07, 1, 2, 3], &ByteArray(vec![1, 2, 3]));
        golden(&[0x0c, 0x01], &ByteArray(vec![]));
    }

    /// Each U29 width and the edges of the 29-bit signed range.
    #[test]
    fn golden_integers() {
        let cases: &[(&[u8], i32)] = &[
            (&[0x04, 0x00], 0),
            (&[0x04, 0x7f], 127),
            (&[0x04, 0x81, 0x00], 128),
            (&[0x04, 0xff, 0x7f], 0x3fff),
            (&[0x04, 0x81, 0x80, 0x00], 0x4000),
            (&[0x04, 0xff, 0xff, 0x7f], 0x1f_ffff),
            (&[0x04, 0x80, 0xc0, 0x80, 0x00], 0x20_0000),
            (&[0x04, 0xbf, 0xff, 0xff, 0xff], (1 << 28) - 1),
            (&[0x04, 0xff, 0xff, 0xff, 0xff], -1),
            (&[0x04, 0xc0, 0x80, 0x80, 0x00], -(1 << 28)),
        ];
        for (bytes, i) in cases {
            golden(bytes, &Integer(*i));
        }
        // Outside 29 bits an integer can only travel as a double.
        assert_eq!(enc(&Integer(1 << 28)), [0x05, 0x41, 0xb0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encoded_len(&Integer(1 << 28)), 9);
        assert_eq!(dec(&enc(&Integer(i32::MIN)), &limits()), Ok(Double(f64::from(i32::MIN))));
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        check(b"\x06\x05\xff\xfe", &s("\u{fffd}\u{fffd}"));
    }

    #[test]
    fn golden_arrays_and_objects() {
        // Associative part {a: 1}, then one dense element 2.
        golden(
            b"\x09\x03\x03a\x04\x01\x01\x04\x02",
            &Array { assoc: vec![("a".into(), Integer(1))], dense: vec![Integer(2)] },
        );
        golden(b"\x09\x01\x01", &dense(vec![]));
        // Anonymous dynamic object {a: 1}: traits 0b1011, class "", member, end.
        golden(b"\x0a\x0b\x01\x03a\x04\x01\x01", &obj("", vec![("a", Integer(1))]));
        golden(b"\x0a\x0b\x01\x01", &obj("", vec![]));
        // Typed object with one sealed member: traits (1 << 4) | 0b0011.
        golden(b"\x0a\x13\x07Foo\x03x\x04\x05", &obj("Foo", vec![("x", Integer(5))]));
        // An empty key cannot be a dynamic member, so the object goes out sealed.
        golden(b"\x0a\x13\x01\x01\x01", &obj("", vec![("", Null)]));
        // Sealed then dynamic: (1 << 4) | 0b1011.
        check(
            b"\x0a\x1b\x07Foo\x03x\x04\x05\x03y\x04\x06\x01",
            &obj("Foo", vec![("x", Integer(5)), ("y", Integer(6))]),
        );
    }

    #[test]
    fn string_references() {
        check(b"\x09\x05\x01\x06\x07abc\x06\x00", &dense(vec![s("abc"), s("abc")]));
        // The empty string takes no index: reference 0 is "abc".
        check(b"\x09\x07\x01\x06\x01\x06\x07abc\x06\x00", &dense(vec![s(""), s("abc"), s("abc")]));
        assert_eq!(dec(b"\x09\x05\x01\x06\x01\x06\x00", &limits()), Err(AmfError::BadReference(0)));
        // Keys and values share the table.
        check(b"\x0a\x0b\x01\x03a\x06\x00\x01", &obj("", vec![("a", s("a"))]));
        assert_eq!(dec(b"\x06\x02", &limits()), Err(AmfError::BadReference(1)));
    }

    #[test]
    fn object_table_references() {
        let date = [0x08, 0x01, 0x42, 0x70, 0, 0, 0, 0, 0, 0];
        // The array is object 0, the date object 1, referenced as 1 << 1.
        let bytes = [&[0x09, 0x05, 0x01][..], &date, &[0x08, 0x02]].concat();
        check(&bytes, &dense(vec![Date(MILLIS), Date(MILLIS)]));
        check(b"\x09\x05\x01\x0c\x03\xaa\x0c\x02", &dense(vec![ByteArray(vec![0xaa]); 2]));
        check(b"\x09\x05\x01\x07\x03x\x0b\x02", &dense(vec![XmlDoc("x".into()); 2]));
        let a = obj("", vec![("a", Integer(1))]);
        check(b"\x09\x05\x01\x0a\x0b\x01\x03a\x04\x01\x01\x0a\x02", &dense(vec![a.clone(), a]));
        let inner = dense(vec![Null]);
        check(b"\x09\x05\x01\x09\x03\x01\x01\x09\x02", &dense(vec![inner.clone(), inner]));
        assert_eq!(dec(b"\x0a\x04", &limits()), Err(AmfError::BadReference(2)));
    }

    #[test]
    fn traits_references() {
        let foo = |x| obj("Foo", vec![("x", Integer(x))]);
        // The second object's header 0b01 means: inline object, traits reference 0.
        check(
            b"\x09\x05\x01\x0a\x13\x07Foo\x03x\x04\x01\x0a\x01\x04\x02",
            &dense(vec![foo(1), foo(2)]),
        );
        assert_eq!(dec(b"\x0a\x05", &limits()), Err(AmfError::BadReference(1)));
    }

    /// Re-decoding a referenced value must not add to any table, or every later index is off.
    #[test]
    fn references_do_not_shift_later_indexes() {
        let bcd = obj("", vec![("a", s("bcd"))]);
        check(
            b"\x09\x09\x01\x0a\x0b\x01\x03a\x06\x07bcd\x01\x0a\x02\x06\x03x\x06\x04",
            &dense(vec![bcd.clone(), bcd, s("x"), s("x")]),
        );
        let (a, b) = (obj("", vec![("a", Integer(1))]), obj("", vec![("b", Integer(2))]));
        check(
            b"\x09\x09\x01\x0a\x0b\x01\x03a\x04\x01\x01\x0a\x02\x0a\x0b\x01\x03b\x04\x02\x01\x0a\x04",
            &dense(vec![a.clone(), a, b.clone(), b]),
        );
        let foo = obj("Foo", vec![("x", Integer(1))]);
        check(
            b"\x09\x09\x01\x0a\x13\x07Foo\x03x\x04\x01\x0a\x02\x0a\x13\x07Bar\x03y\x04\x02\x0a\x05\x04\x03",
            &dense(vec![
                foo.clone(),
                foo,
                obj("Bar", vec![("y", Integer(2))]),
                obj("Bar", vec![("y", Integer(3))]),
            ]),
        );
    }

    #[test]
    fn refused_input() {
        let malformed = |why| Err(AmfError::Malformed(why));
        // An array that contains itself, and an object whose member is its enclosing object.
        assert_eq!(
            dec(b"\x09\x03\x01\x09\x00", &limits()),
            malformed("AMF3 reference to an enclosing value")
        );
        assert_eq!(
            dec(b"\x0a\x0b\x01\x03a\x0a\x00\x01", &limits()),
            malformed("AMF3 reference to an enclosing value")
        );
        assert_eq!(dec(b"\x0a\x07\x07Foo", &limits()), malformed("externalizable"));
        for marker in 0x0d..=0xff {
            assert_eq!(dec(&[marker, 0x01, 0x01], &limits()), Err(AmfError::UnknownMarker(marker)));
        }
    }

    #[test]
    fn encoder_adjusts_what_the_wire_cannot_carry() {
        // An empty associative key would end the list: dropped.
        let array = Array { assoc: vec![("".into(), Null), ("k".into(), Null)], dense: vec![] };
        assert_eq!(enc(&array), b"\x09\x01\x03k\x01\x01");
        assert_eq!(encoded_len(&array), 6);
    }

    /// `[1]` (an array inside an array) `depth` deep.
    fn nested_arrays(depth: usize) -> Vec<u8> {
        let mut bytes = b"\x09\x03\x01".repeat(depth);
        bytes.push(0x01);
        bytes
    }

    #[test]
    fn nesting_bomb_is_too_deep() {
        assert_eq!(dec(&nested_arrays(10_000), &limits()), Err(AmfError::TooDeep));
        let objects = b"\x0a\x0b\x01\x03a".repeat(10_000);
        assert_eq!(dec(&objects, &limits()), Err(AmfError::TooDeep));
        let at_limit = AmfLimits { max_depth: 5, ..limits() };
        assert!(dec(&nested_arrays(5), &at_limit).is_ok());
        assert_eq!(dec(&nested_arrays(6), &at_limit), Err(AmfError::TooDeep));
    }

    /// An array whose elements are arrays, each referencing the one before: the copies nest
    /// one level deeper per link, so the chain meets the depth limit, not the stack's end.
    #[test]
    fn reference_chain_is_too_deep() {
        let links = 100;
        let mut bytes = BytesMut::new();
        bytes.put_u8(marker::ARRAY);
        put_inline_len(&mut bytes, links + 1);
        bytes.put_slice(b"\x01\x09\x01\x01"); // object 1: []
        for link in 0..links {
            // Object 2 + link: [reference to object 1 + link].
            bytes.put_slice(b"\x09\x03\x01\x09");
            put_u29(&mut bytes, u32::try_from(1 + link).unwrap() << 1);
        }
        bytes.put_u8(0x01);
        assert_eq!(dec(&bytes, &limits()), Err(AmfError::TooDeep));
    }

    #[test]
    fn reference_copies_are_charged() {
        // [a = [null, null, null], ref a]: 1 + (1 + 3) + 1 for the reference + (1 + 3) for the
        // copy = 10 elements.
        let bytes = b"\x09\x05\x01\x09\x07\x01\x01\x01\x01\x09\x02";
        assert!(dec(bytes, &AmfLimits { max_elements: 10, ..limits() }).is_ok());
        assert_eq!(
            dec(bytes, &AmfLimits { max_elements: 9, ..limits() }),
            Err(AmfError::TooManyElements)
        );
    }

    /// One array of 100 nulls referenced 10 000 times would be a million values from 20 KB.
    #[test]
    fn object_reference_bomb_is_bounded() {
        let refs = 10_000;
        let mut bytes = BytesMut::new();
        bytes.put_u8(marker::ARRAY);
        put_inline_len(&mut bytes, refs + 1);
        bytes.put_u8(0x01);
        bytes.put_u8(marker::ARRAY);
        put_inline_len(&mut bytes, 100);
        bytes.put_u8(0x01);
        bytes.put_slice(&[0x01; 100]);
        for _ in 0..refs {
            bytes.put_slice(b"\x09\x02");
        }
        bytes.put_u8(0x01);
        assert_eq!(dec(&bytes, &limits()), Err(AmfError::TooManyElements));
    }

    /// A 60 000-byte string referenced 10 000 times would be 600 MB from 80 KB.
    #[test]
    fn string_reference_bomb_is_bounded() {
        let refs = 10_000;
        let mut bytes = BytesMut::new();
        bytes.put_u8(marker::ARRAY);
        put_inline_len(&mut bytes, refs + 1);
        bytes.put_u8(0x01);
        bytes.put_u8(marker::STRING);
        put_text(&mut bytes, &"a".repeat(60_000));
        for _ in 0..refs {
            bytes.put_slice(b"\x06\x00");
        }
        assert_eq!(dec(&bytes, &limits()), Err(AmfError::TooManyElements));
    }

    /// Traits with one 60 000-byte member name, used by 1000 objects by reference: 60 MB of
    /// keys from 60 KB, in few enough values that only the copy charge stops it.
    #[test]
    fn trait_name_bomb_is_bounded() {
        let refs = 1000;
        let mut bytes = BytesMut::new();
        bytes.put_u8(marker::ARRAY);
        put_inline_len(&mut bytes, refs + 1);
        bytes.put_u8(0x01);
        bytes.put_slice(b"\x0a\x13\x01");
        put_text(&mut bytes, &"n".repeat(60_000));
        bytes.put_u8(0x01);
        for _ in 0..refs {
            bytes.put_slice(b"\x0a\x01\x01");
        }
        assert_eq!(dec(&bytes, &limits()), Err(AmfError::TooManyElements));
    }

    /// An object holding a 60 000-byte string, referenced 1000 times: 60 MB from 60 KB, in few
    /// enough values that only the charge for text copied by a re-decode stops it.
    #[test]
    fn text_inside_a_referenced_object_is_charged() {
        let bomb = |refs: usize| {
            let mut bytes = BytesMut::new();
            bytes.put_u8(marker::ARRAY);
            put_inline_len(&mut bytes, refs + 1);
            bytes.put_slice(b"\x01\x0a\x0b\x01\x03a\x06");
            put_text(&mut bytes, &"a".repeat(60_000));
            bytes.put_u8(0x01);
            for _ in 0..refs {
                bytes.put_slice(b"\x0a\x02");
            }
            bytes
        };
        assert_eq!(dec(&bomb(1000), &limits()), Err(AmfError::TooManyElements));
        // A few copies are fine: copies are paid for, not refused.
        assert!(dec(&bomb(3), &limits()).is_ok());
    }

    #[test]
    fn declared_sizes_are_checked_before_allocating() {
        // A string of 2^28 - 1 bytes, declared in five bytes.
        let huge_string = b"\x06\xff\xff\xff\xff";
        assert_eq!(dec(huge_string, &limits()), Err(AmfError::StringTooLong((1 << 28) - 1)));
        let unlimited = AmfLimits { max_string_len: usize::MAX, ..limits() };
        assert_eq!(dec(huge_string, &unlimited), Err(AmfError::Truncated));
        assert_eq!(
            dec(b"\x0c\xff\xff\xff\xff", &limits()),
            Err(AmfError::StringTooLong((1 << 28) - 1))
        );
        // 2^28 - 1 dense elements, 2^25 - 1 sealed names, on a few bytes of input.
        assert_eq!(dec(b"\x09\xff\xff\xff\xff\x01\x01\x01", &limits()), Err(AmfError::Truncated));
        assert_eq!(dec(b"\x0a\xff\xff\xff\xf3\x01\x03a", &limits()), Err(AmfError::Truncated));
        let few = AmfLimits { max_elements: 4, ..limits() };
        assert_eq!(dec(b"\x09\x0b\x01\x01\x01\x01\x01\x01", &few), Err(AmfError::TooManyElements));
    }

    /// Values AMF3 can carry unchanged. Integers stay within 29 bits and associative keys are
    /// non-empty: outside that the encoder adjusts the value (tested above).
    pub(crate) fn arb_value() -> impl Strategy<Value = Amf3Value> {
        let leaf = prop_oneof![
            Just(Undefined),
            Just(Null),
            any::<bool>().prop_map(Boolean),
            (INT29_MIN..=INT29_MAX).prop_map(Integer),
            any::<f64>().prop_map(Double),
            ".{0,12}".prop_map(String),
            ".{0,12}".prop_map(XmlDoc),
            ".{0,12}".prop_map(Xml),
            any::<f64>().prop_map(Date),
            proptest::collection::vec(any::<u8>(), 0..16).prop_map(ByteArray),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                (
                    proptest::collection::vec((".{1,8}", inner.clone()), 0..4),
                    proptest::collection::vec(inner.clone(), 0..6)
                )
                    .prop_map(|(assoc, dense)| Array { assoc, dense }),
                (".{0,6}", proptest::collection::vec((".{0,8}", inner), 0..6))
                    .prop_map(|(class_name, properties)| Object { class_name, properties }),
            ]
        })
    }

    /// What a decoded tree holds, to check it against the limits: values, nesting depth, and
    /// the longest text or byte array.
    #[derive(Debug, Default, Clone, Copy)]
    pub(crate) struct Shape {
        pub(crate) elements: usize,
        pub(crate) depth: usize,
        pub(crate) longest: usize,
    }

    impl Shape {
        pub(crate) fn add(&mut self, other: Shape) {
            self.elements += other.elements;
            self.depth = self.depth.max(other.depth);
            self.longest = self.longest.max(other.longest);
        }

        pub(crate) fn check(&self, limits: &AmfLimits) {
            assert!(self.elements <= limits.max_elements, "{self:?} over {limits:?}");
            assert!(self.depth <= limits.max_depth, "{self:?} over {limits:?}");
            assert!(self.longest <= limits.max_string_len, "{self:?} over {limits:?}");
        }
    }

    pub(crate) fn shape(value: &Amf3Value) -> Shape {
        let mut own = Shape { elements: 1, ..Shape::default() };
        let mut members = Shape::default();
        match value {
            String(t) | XmlDoc(t) | Xml(t) => own.longest = t.len(),
            ByteArray(b) => own.longest = b.len(),
            Array { assoc, dense } => {
                for (key, value) in assoc {
                    members.longest = members.longest.max(key.len());
                    members.add(shape(value));
                }
                dense.iter().for_each(|value| members.add(shape(value)));
                members.depth += 1;
            }
            Object { class_name, properties } => {
                members.longest = class_name.len();
                for (key, value) in properties {
                    members.longest = members.longest.max(key.len());
                    members.add(shape(value));
                }
                members.depth += 1;
            }
            _ => {}
        }
        own.add(members);
        own
    }

    /// Equality that treats NaN as equal to NaN (Debug prints every NaN the same, and every
    /// other double exactly).
    pub(crate) fn same<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    fn small_limits() -> AmfLimits {
        AmfLimits { max_depth: 3, max_string_len: 8, max_elements: 24 }
    }

    proptest! {
        #[test]
        fn round_trip(value in arb_value()) {
            let bytes = enc(&value);
            prop_assert_eq!(encoded_len(&value), bytes.len());
            let back = dec(&bytes, &limits()).expect("own encoding decodes");
            prop_assert!(same(&back, &value), "{:?} came back as {:?}", value, back);
            prop_assert_eq!(enc(&back), bytes);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(prop_oneof![0u8..0x0e, any::<u8>()], 0..512)
        ) {
            for limits in [limits(), small_limits()] {
                let mut rest = &bytes[..];
                if let Ok(value) = decode_one(&mut rest, &limits) {
                    shape(&value).check(&limits);
                }
            }
        }

        #[test]
        fn mutated_encodings_never_panic(
            value in arb_value(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = enc(&value);
            for (at, byte) in edits {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            for limits in [limits(), small_limits()] {
                let mut rest = &bytes[..];
                if let Ok(value) = decode_one(&mut rest, &limits) {
                    shape(&value).check(&limits);
                }
            }
        }
    }
}
