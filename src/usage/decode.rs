//! Streaming decompression of a *copy* of a compressed response for accounting. The client
//! gets the compressed bytes untouched; this only feeds the parsers.

use std::io::Write;

/// A response `Content-Encoding` LMGate can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `gzip` / `x-gzip`.
    Gzip,
    /// `deflate` (zlib-wrapped, per RFC 9110).
    Deflate,
    /// `br`.
    Brotli,
    /// `zstd`.
    Zstd,
}

impl Encoding {
    /// `None` for identity; `Err(())` for an encoding (or a stack of them) we cannot read.
    #[allow(clippy::result_unit_err)] // the only failure is "unsupported": no detail to carry
    pub fn from_header(value: &str) -> Result<Option<Encoding>, ()> {
        let mut found = None;
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let e = match part.to_ascii_lowercase().as_str() {
                "identity" => continue,
                "gzip" | "x-gzip" => Encoding::Gzip,
                "deflate" => Encoding::Deflate,
                "br" => Encoding::Brotli,
                "zstd" => Encoding::Zstd,
                _ => return Err(()),
            };
            if found.replace(e).is_some() {
                return Err(()); // stacked encodings are not worth the complexity
            }
        }
        Ok(found)
    }
}

/// Largest decoded output kept per input chunk; bounds memory against decompression bombs.
const MAX_OUT_PER_CHUNK: usize = 8 * 1024 * 1024;

/// Bounded sink: holds decoded bytes until the caller takes them.
#[derive(Default)]
struct Sink {
    out: Vec<u8>,
    overflow: bool,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > MAX_OUT_PER_CHUNK {
            self.overflow = true;
            return Err(std::io::Error::other("decoded chunk too large"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Inner {
    Gzip(flate2::write::GzDecoder<Sink>),
    Deflate(flate2::write::ZlibDecoder<Sink>),
    Brotli(Box<brotli::DecompressorWriter<Sink>>),
    Zstd(zstd::stream::write::Decoder<'static, Sink>),
}

/// Incremental decoder: compressed chunk in, decoded bytes out.
pub struct Decoder {
    inner: Inner,
    /// The stream could not be decoded (corrupt, or a bomb).
    pub failed: bool,
}

impl Decoder {
    /// A decoder for `enc`.
    pub fn new(enc: Encoding) -> Decoder {
        let inner = match enc {
            Encoding::Gzip => Inner::Gzip(flate2::write::GzDecoder::new(Sink::default())),
            Encoding::Deflate => Inner::Deflate(flate2::write::ZlibDecoder::new(Sink::default())),
            Encoding::Brotli => {
                Inner::Brotli(Box::new(brotli::DecompressorWriter::new(Sink::default(), 4096)))
            }
            Encoding::Zstd => match zstd::stream::write::Decoder::new(Sink::default()) {
                Ok(d) => Inner::Zstd(d),
                Err(_) => {
                    // Only fails when zstd cannot allocate its context.
                    return Decoder {
                        inner: Inner::Gzip(flate2::write::GzDecoder::new(Sink::default())),
                        failed: true,
                    };
                }
            },
        };
        Decoder { inner, failed: false }
    }

    /// Decode `chunk`; returns the decoded bytes (empty once failed).
    pub fn decode(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.failed {
            return Vec::new();
        }
        let res = match &mut self.inner {
            Inner::Gzip(d) => d.write_all(chunk).and_then(|_| d.flush()),
            Inner::Deflate(d) => d.write_all(chunk).and_then(|_| d.flush()),
            Inner::Brotli(d) => d.write_all(chunk).and_then(|_| d.flush()),
            Inner::Zstd(d) => d.write_all(chunk).and_then(|_| d.flush()),
        };
        let sink = self.sink();
        let out = std::mem::take(&mut sink.out);
        if res.is_err() {
            self.failed = true;
        }
        out
    }

    /// End of input: whatever the decoder still holds.
    pub fn finish(&mut self) -> Vec<u8> {
        if self.failed {
            return Vec::new();
        }
        let res = match &mut self.inner {
            Inner::Gzip(d) => d.try_finish(),
            Inner::Deflate(d) => d.try_finish(),
            Inner::Brotli(d) => d.flush(),
            Inner::Zstd(d) => d.flush(),
        };
        if res.is_err() {
            self.failed = true;
        }
        std::mem::take(&mut self.sink().out)
    }

    fn sink(&mut self) -> &mut Sink {
        match &mut self.inner {
            Inner::Gzip(d) => d.get_mut(),
            Inner::Deflate(d) => d.get_mut(),
            Inner::Brotli(d) => d.get_mut(),
            Inner::Zstd(d) => d.get_mut(),
        }
    }
}

/// Compress `data` (tests and mock upstreams).
#[cfg(any(test, feature = "test-support"))]
pub fn encode(enc: Encoding, data: &[u8]) -> Vec<u8> {
    match enc {
        Encoding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).expect("writing to a Vec");
            e.finish().expect("writing to a Vec")
        }
        Encoding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).expect("writing to a Vec");
            e.finish().expect("writing to a Vec")
        }
        Encoding::Brotli => {
            let mut out = Vec::new();
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                w.write_all(data).expect("writing to a Vec");
            }
            out
        }
        Encoding::Zstd => zstd::encode_all(data, 3).expect("writing to a Vec"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values() {
        assert_eq!(Encoding::from_header("gzip"), Ok(Some(Encoding::Gzip)));
        assert_eq!(Encoding::from_header(" BR "), Ok(Some(Encoding::Brotli)));
        assert_eq!(Encoding::from_header("identity"), Ok(None));
        assert_eq!(Encoding::from_header(""), Ok(None));
        assert_eq!(Encoding::from_header("gzip, br"), Err(()));
        assert_eq!(Encoding::from_header("compress"), Err(()));
    }

    #[test]
    fn every_encoding_round_trips_in_small_chunks() {
        let data = include_bytes!("../../tests/fixtures/anthropic_stream.sse").repeat(20);
        for enc in [
            Encoding::Gzip,
            Encoding::Deflate,
            Encoding::Brotli,
            Encoding::Zstd,
        ] {
            let packed = encode(enc, &data);
            for step in [1, 7, 100, packed.len()] {
                let mut d = Decoder::new(enc);
                let mut out = Vec::new();
                for c in packed.chunks(step) {
                    out.extend(d.decode(c));
                }
                out.extend(d.finish());
                assert!(!d.failed, "{enc:?}/{step}");
                assert_eq!(out, data, "{enc:?} step {step}");
            }
        }
    }

    #[test]
    fn corrupt_input_fails_without_panicking() {
        for enc in [
            Encoding::Gzip,
            Encoding::Deflate,
            Encoding::Brotli,
            Encoding::Zstd,
        ] {
            let mut d = Decoder::new(enc);
            let _ = d.decode(b"this is not compressed at all, not even a little bit");
            let _ = d.finish();
            assert!(d.failed, "{enc:?}");
        }
    }
}
