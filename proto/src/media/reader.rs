//! The two bounds-checked readers every parser in this module stands on.
//!
//! [`ByteCursor`] cuts byte-aligned structures (FLV and Enhanced RTMP headers, ISO-BMFF
//! configuration records) into fields and borrowed sub-slices, and answers `None` at the end.
//! It is on the per-frame path ([`super::inspect_video`]), so it is a slice and nothing more.
//! [`Bits`] reads bit-packed syntax (H.264/HEVC SPS, AV1 OBUs, VP9 frame headers,
//! AudioSpecificConfig, AC-3 sync frames), including Exp-Golomb codes, and answers
//! [`MediaError::Truncated`] at the end.
//!
//! They share no method and are not one reader in two spellings: the byte cursor's callers want
//! borrowed sub-slices and an `Option` (a short tag header is "nothing to classify", not an
//! error), the bit reader's want single bits, Exp-Golomb codes and an error that says why. One
//! type doing both would track a bit position on the per-frame path and check alignment before
//! every slice, for no caller that needs both at once.

use super::MediaError;

/// A byte cursor whose every read is bounds-checked and answers `None` past the end.
#[derive(Debug, Clone)]
pub(super) struct ByteCursor<'a> {
    data: &'a [u8],
}

impl<'a> ByteCursor<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        ByteCursor { data }
    }
    pub(super) fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }
    pub(super) fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(super) fn u24(&mut self) -> Option<u32> {
        let b = self.take(3)?;
        Some(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }
    pub(super) fn fourcc(&mut self) -> Option<[u8; 4]> {
        let b = self.take(4)?;
        Some([b[0], b[1], b[2], b[3]])
    }
    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.data.len() {
            return None;
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Some(head)
    }
    pub(super) fn rest(&self) -> &'a [u8] {
        self.data
    }
}

/// A big-endian bit cursor for SPS/OBU syntax. Reads past the end are `Truncated`.
#[derive(Debug)]
pub(super) struct Bits<'a> {
    data: &'a [u8],
    /// Position in bits from the start of `data`.
    pos: usize,
}

impl<'a> Bits<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Bits { data, pos: 0 }
    }

    pub(super) fn bits_left(&self) -> usize {
        (self.data.len() * 8).saturating_sub(self.pos)
    }

    pub(super) fn bit(&mut self) -> Result<bool, MediaError> {
        let byte = *self.data.get(self.pos / 8).ok_or(MediaError::Truncated)?;
        let bit = (byte >> (7 - (self.pos % 8))) & 1;
        self.pos += 1;
        Ok(bit == 1)
    }

    pub(super) fn flag(&mut self) -> Result<bool, MediaError> {
        self.bit()
    }

    /// Reads `n <= 32` bits.
    pub(super) fn bits(&mut self, n: u32) -> Result<u32, MediaError> {
        debug_assert!(n <= 32);
        if self.bits_left() < n as usize {
            return Err(MediaError::Truncated);
        }
        let mut v: u64 = 0;
        for _ in 0..n {
            v = (v << 1) | u64::from(self.bit()?);
        }
        // n <= 32, so v fits; the fallback is unreachable but keeps this panic-free.
        Ok(u32::try_from(v).unwrap_or(u32::MAX))
    }

    pub(super) fn skip(&mut self, n: usize) -> Result<(), MediaError> {
        if self.bits_left() < n {
            return Err(MediaError::Truncated);
        }
        self.pos += n;
        Ok(())
    }

    /// Unsigned Exp-Golomb `ue(v)` (H.264 9.1 / HEVC 9.2). At most 31 leading zeros, so the
    /// value fits in 32 bits; a longer prefix is not valid in any field we read.
    pub(super) fn ue(&mut self) -> Result<u32, MediaError> {
        match self.leading_zeros()? {
            None => Err(MediaError::Malformed("exp-Golomb code longer than 32 bits")),
            Some(zeros) => self.golomb_suffix(zeros),
        }
    }

    /// Signed Exp-Golomb `se(v)`.
    pub(super) fn se(&mut self) -> Result<i64, MediaError> {
        let k = i64::from(self.ue()?);
        Ok(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }

    /// AV1 `uvlc()` (AV1 spec 4.10.3): like ue(v) but 32+ leading zeros mean 2^32 - 1.
    pub(super) fn uvlc(&mut self) -> Result<u32, MediaError> {
        match self.leading_zeros()? {
            None => Ok(u32::MAX),
            Some(zeros) => self.golomb_suffix(zeros),
        }
    }

    /// The prefix shared by `ue(v)` and `uvlc()`: zero bits up to and including the first one
    /// bit. `None` once 32 zeros have been read, without reading further: neither code has a
    /// value with a longer prefix that fits 32 bits, and stopping there bounds the loop.
    fn leading_zeros(&mut self) -> Result<Option<u32>, MediaError> {
        let mut zeros = 0u32;
        while !self.bit()? {
            zeros += 1;
            if zeros == 32 {
                return Ok(None);
            }
        }
        Ok(Some(zeros))
    }

    /// `2^zeros - 1 + bits(zeros)`, which is at most `2^32 - 2` for `zeros <= 31`.
    fn golomb_suffix(&mut self, zeros: u32) -> Result<u32, MediaError> {
        let suffix = self.bits(zeros)?;
        Ok(((1u64 << zeros) - 1 + u64::from(suffix)).try_into().unwrap_or(u32::MAX))
    }
}
