//! Chunk codec tests: see the test names.
