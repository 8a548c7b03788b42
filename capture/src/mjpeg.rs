//! MJPEG frames to RGB through `zune-jpeg`.
//!
//! UVC cameras may leave the Huffman tables out of their JPEGs: the UVC
//! payload spec makes DHT optional and fixes the tables to the standard ones.
//! `zune-jpeg` only supplies them when an `AVI1` APP0 marker is present, so
//! [`insert_huffman_tables`] puts them in before the first scan when no DHT
//! segment precedes it.

use std::borrow::Cow;

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use crate::convert::MAX_SIDE;
use crate::frame::RgbImage;

/// Why a JPEG frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MjpegError {
    #[error("frame size must be 1..={MAX_SIDE} on each side")]
    BadSize,
    #[error("not a JPEG (no SOI marker)")]
    NotJpeg,
    #[error("headers end early at byte {0}")]
    Truncated(usize),
    #[error("expected a marker at byte {0}")]
    NoMarker(usize),
    #[error("marker 0x{marker:02x} at byte {at} does not belong in the headers")]
    BadMarker { marker: u8, at: usize },
    #[error("segment 0x{marker:02x} at byte {at} has an impossible length")]
    BadLength { marker: u8, at: usize },
    #[error("no frame header before the scan")]
    NoFrameHeader,
    #[error(
        "component sampling {0:02x?} is not one cameras send (Y 1 or 2 each way, Cb and Cr 1x1)"
    )]
    Sampling(Vec<u8>),
    #[error("image ends before its first scan")]
    NoScan,
    #[error("JPEG is {found_width}x{found_height}, not the frame's size")]
    SizeMismatch { found_width: u16, found_height: u16 },
    #[error("zune-jpeg: {0}")]
    Decode(String),
}

const SOI: u8 = 0xd8;
const EOI: u8 = 0xd9;
const SOS: u8 = 0xda;
const DHT: u8 = 0xc4;
const TEM: u8 = 0x01;

/// Decodes one MJPEG frame that must be `width`×`height`, adding the standard
/// Huffman tables when the frame has none.
pub fn decode(jpeg: &[u8], width: u32, height: u32) -> Result<RgbImage, MjpegError> {
    let (w, h) = frame_size(width, height)?;
    let headers = Headers::read(jpeg)?;
    let size = headers.size.ok_or(MjpegError::NoFrameHeader)?;
    if (usize::from(size.0), usize::from(size.1)) != (w, h) {
        return Err(MjpegError::SizeMismatch {
            found_width: size.0,
            found_height: size.1,
        });
    }
    let data = zune(&headers.with_tables(jpeg), w, h)?;
    Ok(RgbImage {
        width: w,
        height: h,
        data,
    })
}

/// RGB pixels of a `w`×`h` JPEG that has its Huffman tables.
fn zune(jpeg: &[u8], w: usize, h: usize) -> Result<Vec<u8>, MjpegError> {
    // The limits make zune refuse a larger image before it allocates for it,
    // should its reading of the headers differ from ours.
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(w)
        .set_max_height(h);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(jpeg), options);
    // zune-jpeg asserts on some inputs the header checks do not foresee: a
    // bad frame must not take the capture thread down.
    let data = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decoder.decode()))
        .map_err(|_| MjpegError::Decode("zune-jpeg panicked".into()))?
        .map_err(|e| MjpegError::Decode(e.to_string()))?;
    if decoder.dimensions() != Some((w, h)) || Some(data.len()) != w.checked_mul(h * 3) {
        return Err(MjpegError::Decode(format!(
            "decoded {:?} into {} bytes",
            decoder.dimensions(),
            data.len()
        )));
    }
    Ok(data)
}

fn frame_size(width: u32, height: u32) -> Result<(usize, usize), MjpegError> {
    let side = |n: u32| {
        usize::try_from(n)
            .ok()
            .filter(|_| (1..=MAX_SIDE).contains(&n))
            .ok_or(MjpegError::BadSize)
    };
    Ok((side(width)?, side(height)?))
}

/// Returns `jpeg` unchanged when a DHT segment precedes its first scan, else a
/// copy with the standard tables (ISO/IEC 10918-1 Annex K.3) inserted right
/// before that scan.
pub fn insert_huffman_tables(jpeg: &[u8]) -> Result<Cow<'_, [u8]>, MjpegError> {
    Ok(Headers::read(jpeg)?.with_tables(jpeg))
}

/// What the marker segments before the first scan say.
#[derive(Debug, PartialEq, Eq)]
struct Headers {
    /// Where the first SOS marker (with any fill bytes before it) starts.
    scan_at: usize,
    has_dht: bool,
    /// Width and height from the first frame header.
    size: Option<(u16, u16)>,
}

impl Headers {
    /// Walks the segments from SOI to the first SOS. Every step moves forward
    /// and is bounds-checked, so any bytes end in `Ok` or `Err`.
    fn read(jpeg: &[u8]) -> Result<Headers, MjpegError> {
        if !jpeg.starts_with(&[0xff, SOI]) {
            return Err(MjpegError::NotJpeg);
        }
        let mut headers = Headers {
            scan_at: 0,
            has_dht: false,
            size: None,
        };
        let mut pos = 2;
        loop {
            let at = pos;
            match jpeg.get(pos) {
                Some(0xff) => {}
                Some(_) => return Err(MjpegError::NoMarker(pos)),
                None => return Err(MjpegError::Truncated(pos)),
            }
            while jpeg.get(pos) == Some(&0xff) {
                pos += 1;
            }
            let marker = *jpeg.get(pos).ok_or(MjpegError::Truncated(pos))?;
            pos += 1;
            match marker {
                SOS => {
                    headers.scan_at = at;
                    return Ok(headers);
                }
                EOI => return Err(MjpegError::NoScan),
                TEM | 0xd0..=0xd7 => {}
                0x00 | SOI => return Err(MjpegError::BadMarker { marker, at }),
                _ => {
                    let body = segment(jpeg, pos, marker, at)?;
                    headers.note(marker, body, at)?;
                    pos += body.len() + 2;
                }
            }
        }
    }

    fn note(&mut self, marker: u8, body: &[u8], at: usize) -> Result<(), MjpegError> {
        if marker == DHT {
            self.has_dht = true;
        } else if is_frame_header(marker) && self.size.is_none() {
            // Precision, then height and width.
            let [_, h0, h1, w0, w1, ..] = *body else {
                return Err(MjpegError::BadLength { marker, at });
            };
            check_sampling(body).ok_or(MjpegError::BadLength { marker, at })??;
            self.size = Some((u16::from_be_bytes([w0, w1]), u16::from_be_bytes([h0, h1])));
        }
        Ok(())
    }

    fn with_tables<'a>(&self, jpeg: &'a [u8]) -> Cow<'a, [u8]> {
        if self.has_dht {
            return Cow::Borrowed(jpeg);
        }
        let (head, scan) = jpeg.split_at(self.scan_at.min(jpeg.len()));
        let mut out = Vec::with_capacity(jpeg.len() + STANDARD_DHT.len());
        out.extend_from_slice(head);
        out.extend_from_slice(&STANDARD_DHT);
        out.extend_from_slice(scan);
        Cow::Owned(out)
    }
}

/// The body of the segment whose length field starts at `pos`.
fn segment(jpeg: &[u8], pos: usize, marker: u8, at: usize) -> Result<&[u8], MjpegError> {
    let rest = jpeg.get(pos..).unwrap_or_default();
    let [l0, l1, ..] = *rest else {
        return Err(MjpegError::Truncated(jpeg.len()));
    };
    let body_len = usize::from(u16::from_be_bytes([l0, l1]))
        .checked_sub(2)
        .ok_or(MjpegError::BadLength { marker, at })?;
    rest.get(2..2 + body_len)
        .ok_or(MjpegError::Truncated(jpeg.len()))
}

/// Refuses a frame header's component sampling unless it is what cameras
/// send: grey, or Y sampled 1 or 2 each way over 1x1 Cb and Cr (4:4:4,
/// 4:2:2, 4:4:0, 4:2:0). zune-jpeg's upsamplers panic on some others (a
/// chroma component sampled above luma). `None` when the header is short.
fn check_sampling(body: &[u8]) -> Option<Result<(), MjpegError>> {
    let count = usize::from(*body.get(5)?);
    let components = body.get(6..6 + 3 * count)?;
    let sampling: Vec<u8> = components.chunks_exact(3).map(|c| c[1]).collect();
    let luma_ok = |s: u8| matches!(s >> 4, 1 | 2) && matches!(s & 0xf, 1 | 2);
    let ok = match sampling[..] {
        [y] => luma_ok(y),
        [y, 0x11, 0x11] => luma_ok(y),
        _ => false,
    };
    Some(if ok {
        Ok(())
    } else {
        Err(MjpegError::Sampling(sampling))
    })
}

/// SOF0..SOF15, less DHT, JPG and DAC which share the range.
fn is_frame_header(marker: u8) -> bool {
    matches!(marker, 0xc0..=0xcf) && !matches!(marker, DHT | 0xc8 | 0xcc)
}

/// Code counts for lengths 1..=16 bits, then the symbols in code order.
struct Table {
    class_and_id: u8,
    counts: [u8; 16],
    symbols: &'static [u8],
}

/// DC symbols are magnitude categories 0..=11, in the same order for both
/// components.
const DC_SYMBOLS: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];

const DC_LUMA: Table = Table {
    class_and_id: 0x00,
    counts: [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    symbols: &DC_SYMBOLS,
};

const DC_CHROMA: Table = Table {
    class_and_id: 0x01,
    counts: [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    symbols: &DC_SYMBOLS,
};

/// AC symbols are run (high nibble) and size (low nibble): EOB 0x00, ZRL 0xf0
/// and sizes 1..=10 for each run, 162 in all.
const AC_SYMBOL_COUNT: usize = 162;

/// Symbols with codes of 15 bits or less (Table K.5), in code order.
const AC_LUMA_SHORT: [u8; 37] = [
    0x01, 0x02, // 2 bits
    0x03, // 3
    0x00, 0x04, 0x11, // 4
    0x05, 0x12, 0x21, // 5
    0x31, 0x41, // 6
    0x06, 0x13, 0x51, 0x61, // 7
    0x07, 0x22, 0x71, // 8
    0x14, 0x32, 0x81, 0x91, 0xa1, // 9
    0x08, 0x23, 0x42, 0xb1, 0xc1, // 10
    0x15, 0x52, 0xd1, 0xf0, // 11
    0x24, 0x33, 0x62, 0x72, // 12
    0x82, // 15
];

/// Symbols with codes of 15 bits or less (Table K.6), in code order.
const AC_CHROMA_SHORT: [u8; 43] = [
    0x00, 0x01, // 2 bits
    0x02, // 3
    0x03, 0x11, // 4
    0x04, 0x05, 0x21, 0x31, // 5
    0x06, 0x12, 0x41, 0x51, // 6
    0x07, 0x61, 0x71, // 7
    0x13, 0x22, 0x32, 0x81, // 8
    0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, // 9
    0x09, 0x23, 0x33, 0x52, 0xf0, // 10
    0x15, 0x62, 0x72, 0xd1, // 11
    0x0a, 0x16, 0x24, 0x34, // 12
    0xe1, // 14
    0x25, 0xf1, // 15
];

const AC_LUMA_SYMBOLS: [u8; AC_SYMBOL_COUNT] = ac_symbols(&AC_LUMA_SHORT);
const AC_CHROMA_SYMBOLS: [u8; AC_SYMBOL_COUNT] = ac_symbols(&AC_CHROMA_SHORT);

const AC_LUMA: Table = Table {
    class_and_id: 0x10,
    counts: [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 125],
    symbols: &AC_LUMA_SYMBOLS,
};

const AC_CHROMA: Table = Table {
    class_and_id: 0x11,
    counts: [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 119],
    symbols: &AC_CHROMA_SYMBOLS,
};

/// In both standard AC tables the 16-bit codes go to every symbol not coded
/// shorter, in ascending order: `short`, then those.
const fn ac_symbols(short: &[u8]) -> [u8; AC_SYMBOL_COUNT] {
    let mut out = [0; AC_SYMBOL_COUNT];
    let mut n = 0;
    while n < short.len() {
        out[n] = short[n];
        n += 1;
    }
    let mut symbol: u8 = 0;
    loop {
        let size = symbol & 0x0f;
        let is_ac = symbol == 0x00 || symbol == 0xf0 || (size >= 1 && size <= 10);
        if is_ac && !contains(short, symbol) {
            out[n] = symbol;
            n += 1;
        }
        if symbol == 0xff {
            break;
        }
        symbol += 1;
    }
    assert!(n == AC_SYMBOL_COUNT);
    out
}

const fn contains(list: &[u8], value: u8) -> bool {
    let mut i = 0;
    while i < list.len() {
        if list[i] == value {
            return true;
        }
        i += 1;
    }
    false
}

const TABLES: [Table; 4] = [DC_LUMA, AC_LUMA, DC_CHROMA, AC_CHROMA];

const DHT_LEN: usize = 4 + 4 * 17 + 2 * DC_SYMBOLS.len() + 2 * AC_SYMBOL_COUNT;

/// One DHT segment (marker included) holding the four standard tables.
pub(crate) const STANDARD_DHT: [u8; DHT_LEN] = standard_dht();

const fn standard_dht() -> [u8; DHT_LEN] {
    let mut out = [0; DHT_LEN];
    out[0] = 0xff;
    out[1] = DHT;
    let length = DHT_LEN - 2;
    assert!(length <= 0xffff);
    out[2] = (length >> 8) as u8;
    out[3] = (length & 0xff) as u8;
    let mut at = 4;
    let mut t = 0;
    while t < TABLES.len() {
        let table = &TABLES[t];
        out[at] = table.class_and_id;
        at += 1;
        let mut total = 0;
        let mut i = 0;
        while i < 16 {
            out[at] = table.counts[i];
            total += table.counts[i] as usize;
            at += 1;
            i += 1;
        }
        assert!(total == table.symbols.len());
        let mut s = 0;
        while s < table.symbols.len() {
            out[at] = table.symbols[s];
            at += 1;
            s += 1;
        }
        t += 1;
    }
    assert!(at == DHT_LEN);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal header run: SOI, an APP0, a grey SOF0 of 16x8, then SOS.
    fn headers(with_dht: bool) -> Vec<u8> {
        let mut j = vec![0xff, SOI, 0xff, 0xe0, 0x00, 0x04, b'h', b'i'];
        // One grey component: id 1, sampled 1x1, quantisation table 0.
        j.extend_from_slice(&[0xff, 0xc0, 0x00, 0x0b, 8, 0, 8, 0, 16, 1, 1, 0x11, 0]);
        if with_dht {
            j.extend_from_slice(&STANDARD_DHT);
        }
        j.extend_from_slice(&[0xff, 0xff, SOS, 0x00, 0x02, 0x12, 0x34, 0xff, EOI]);
        j
    }

    #[test]
    fn walk_finds_scan_size_and_tables() {
        let j = headers(false);
        let h = Headers::read(&j).unwrap();
        assert_eq!(
            h,
            Headers {
                scan_at: 21,
                has_dht: false,
                size: Some((16, 8))
            }
        );
        let with = insert_huffman_tables(&j).unwrap();
        assert_eq!(&with[..21], &j[..21]);
        assert_eq!(&with[21..21 + DHT_LEN], &STANDARD_DHT);
        assert_eq!(&with[21 + DHT_LEN..], &j[21..]);
        assert!(Headers::read(&with).unwrap().has_dht);

        let j = headers(true);
        assert!(matches!(insert_huffman_tables(&j), Ok(Cow::Borrowed(b)) if b == &j[..]));
    }

    #[test]
    fn walk_rejects_broken_headers() {
        let err = |j: &[u8]| Headers::read(j).unwrap_err();
        assert_eq!(err(b""), MjpegError::NotJpeg);
        assert_eq!(err(&[0xff, SOI]), MjpegError::Truncated(2));
        assert_eq!(err(&[0xff, SOI, 0x12]), MjpegError::NoMarker(2));
        assert_eq!(err(&[0xff, SOI, 0xff, 0xff]), MjpegError::Truncated(4));
        assert_eq!(err(&[0xff, SOI, 0xff, EOI]), MjpegError::NoScan);
        assert_eq!(
            err(&[0xff, SOI, 0xff, SOI]),
            MjpegError::BadMarker { marker: SOI, at: 2 }
        );
        assert_eq!(
            err(&[0xff, SOI, 0xff, 0xe0, 0x00, 0x01]),
            MjpegError::BadLength {
                marker: 0xe0,
                at: 2
            }
        );
        assert_eq!(
            err(&[0xff, SOI, 0xff, 0xe0, 0xff, 0xff, 0]),
            MjpegError::Truncated(7)
        );
        assert_eq!(
            err(&[0xff, SOI, 0xff, 0xe0, 0x00]),
            MjpegError::Truncated(5)
        );
        // A frame header too short to hold a size.
        assert_eq!(
            err(&[0xff, SOI, 0xff, 0xc0, 0x00, 0x04, 8, 0]),
            MjpegError::BadLength {
                marker: 0xc0,
                at: 2
            }
        );
        // Standalone markers need no length.
        let mut j = vec![0xff, SOI, 0xff, 0xd3, 0xff, TEM];
        j.extend_from_slice(&[0xff, SOS]);
        assert_eq!(Headers::read(&j).unwrap().scan_at, 6);
    }

    #[test]
    fn standard_tables_are_well_formed() {
        assert_eq!(DHT_LEN, 420);
        assert_eq!(&STANDARD_DHT[..4], &[0xff, DHT, 0x01, 0xa2]);
        for table in TABLES {
            let mut sorted = table.symbols.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), table.symbols.len(), "a symbol twice");
        }
        // Kraft: codes fill at most the code space, as a prefix code must.
        for table in TABLES {
            let used: u32 = (1..=16u32)
                .zip(table.counts)
                .map(|(bits, n)| u32::from(n) << (16 - bits))
                .sum();
            assert!(used < 1 << 16);
        }
    }

    /// jpeg-encoder writes the standard tables as four DHT segments: their
    /// bodies, end to end, must equal ours.
    #[test]
    fn standard_tables_match_an_encoder() {
        let mut jpeg = Vec::new();
        let pixels = vec![128u8; 16 * 16 * 3];
        jpeg_encoder::Encoder::new(&mut jpeg, 90)
            .encode(&pixels, 16, 16, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let mut bodies = Vec::new();
        let mut pos = 2;
        while jpeg[pos + 1] != SOS {
            let body = segment(&jpeg, pos + 2, jpeg[pos + 1], pos).unwrap();
            if jpeg[pos + 1] == DHT {
                bodies.extend_from_slice(body);
            }
            pos += 4 + body.len();
        }
        assert_eq!(bodies, &STANDARD_DHT[4..]);
    }

    #[test]
    fn decode_checks_size_first() {
        assert_eq!(decode(&headers(false), 0, 8), Err(MjpegError::BadSize));
        assert_eq!(
            decode(&headers(false), MAX_SIDE + 1, 8),
            Err(MjpegError::BadSize)
        );
        assert_eq!(
            decode(&headers(false), 8, 16),
            Err(MjpegError::SizeMismatch {
                found_width: 16,
                found_height: 8
            })
        );
    }
}
