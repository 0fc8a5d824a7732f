//! RTMP timestamps are 32-bit milliseconds that wrap after about 49.7 days; a stream that has
//! run longer than that must keep relaying. All arithmetic on them is wrapping, and ordering is
//! by the signed distance (serial-number arithmetic, RFC 1982 style), so 0x0000_0010 comes after
//! 0xffff_fff0.

/// A 32-bit RTMP timestamp in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RtmpTimestamp(pub u32);

impl RtmpTimestamp {
    pub const ZERO: RtmpTimestamp = RtmpTimestamp(0);

    pub fn new(millis: u32) -> Self {
        RtmpTimestamp(millis)
    }

    pub fn value(self) -> u32 {
        self.0
    }

    /// `self + delta`, wrapping.
    pub fn add_delta(self, delta: u32) -> Self {
        RtmpTimestamp(self.0.wrapping_add(delta))
    }

    /// Milliseconds from `earlier` to `self`, negative when `self` is before `earlier`.
    /// Meaningful while the two are within 2^31 ms (about 24.8 days) of each other.
    pub fn signed_since(self, earlier: RtmpTimestamp) -> i32 {
        self.0.wrapping_sub(earlier.0) as i32
    }

    /// True when `self` is strictly later than `other` in serial-number order.
    pub fn is_after(self, other: RtmpTimestamp) -> bool {
        self.signed_since(other) > 0
    }
}

impl From<u32> for RtmpTimestamp {
    fn from(v: u32) -> Self {
        RtmpTimestamp(v)
    }
}

impl std::fmt::Display for RtmpTimestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wraps_past_u32_max() {
        let t = RtmpTimestamp(u32::MAX - 5);
        assert_eq!(t.add_delta(10), RtmpTimestamp(4));
        assert!(RtmpTimestamp(4).is_after(t));
        assert_eq!(RtmpTimestamp(4).signed_since(t), 10);
        assert_eq!(t.signed_since(RtmpTimestamp(4)), -10);
    }

    proptest! {
        #[test]
        fn delta_round_trips(base: u32, delta in 0u32..0x7fff_ffff) {
            let t = RtmpTimestamp(base);
            let later = t.add_delta(delta);
            prop_assert_eq!(later.signed_since(t), delta as i32);
            prop_assert_eq!(later.is_after(t), delta > 0);
        }
    }
}
