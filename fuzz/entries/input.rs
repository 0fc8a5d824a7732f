//! Structured choices read from fuzz bytes.
//!
//! This is the idea of `arbitrary::Unstructured` in a few lines of our own: the entries are also
//! compiled into rtmp-proto's `fuzz_corpus` test, which has no `arbitrary` dependency. Reads past
//! the end give zeros (or empty slices), so every byte string is a valid input and the fuzzer
//! never wastes runs on "not enough bytes".

/// A cursor over the fuzz input.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        usize::from(self.u16()) % n
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let len = self.below(max + 1);
        self.take(len)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }

    /// A piece schedule: one length byte (at most 15 pieces), then that many size bytes.
    pub fn schedule(&mut self) -> Schedule<'a> {
        let n = usize::from(self.u8() % 16);
        Schedule(self.take(n))
    }
}

/// How to cut a byte stream into the pieces a socket might deliver. Byte `b` means a piece of
/// `1 + b*b/8` bytes (1 to 8129, most of them small), the sizes repeat in turn, and an empty
/// schedule delivers everything at once.
#[derive(Debug, Clone, Copy)]
pub struct Schedule<'a>(&'a [u8]);

impl<'a> Schedule<'a> {
    /// The whole stream in one piece.
    pub const WHOLE: Schedule<'static> = Schedule(&[]);

    /// `data` cut into pieces.
    pub fn pieces<'d>(self, data: &'d [u8]) -> impl Iterator<Item = &'d [u8]> + 'd
    where
        'a: 'd,
    {
        let mut sizes = self.0.iter().cycle().map(|&b| 1 + usize::from(b) * usize::from(b) / 8);
        let whole = self.0.is_empty();
        let mut rest = data;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let n = if whole { rest.len() } else { sizes.next().unwrap_or(1).min(rest.len()) };
            let (piece, tail) = rest.split_at(n);
            rest = tail;
            Some(piece)
        })
    }
}
