//! `.npy` arrays inside a `.npz` (zip) archive, as NumPy's `savez` and
//! `savez_compressed` write them. MLX's C++ core reads single `.npy` files
//! only; MANO ships as an `.npz`.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum NpzError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a zip archive: {0}")]
    Zip(#[from] zip::result::ZipError),
    #[error("{name}: {source}")]
    Npy {
        name: String,
        #[source]
        source: NpyError,
    },
}

/// Why bytes are not an `.npy` array this reader can decode.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("not an .npy array (bad magic)")]
    BadMagic,
    #[error("unsupported .npy version {0}")]
    Version(u8),
    #[error("truncated header")]
    TruncatedHeader,
    #[error("header is not text")]
    HeaderNotText,
    #[error("header has no {0}")]
    MissingKey(&'static str),
    #[error("bad shape {0}")]
    Shape(String),
    #[error("unsupported dtype {0}")]
    Dtype(String),
    #[error("data holds {got} bytes, shape {shape:?} of {descr} needs {needed}")]
    ShortData {
        got: usize,
        shape: Vec<usize>,
        descr: String,
        needed: usize,
    },
}

/// One array: its shape and its values widened to f64 (exact for every
/// dtype MANO uses: f32, f64 and integers below 2^53).
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

impl NpyArray {
    pub fn to_f32(&self) -> Vec<f32> {
        self.values.iter().map(|&v| v as f32).collect()
    }

    pub fn to_i32(&self) -> Vec<i32> {
        self.values.iter().map(|&v| v as i32).collect()
    }
}

/// Reads every `<name>.npy` member of the archive at `path`.
pub fn read_npz(path: &Path) -> Result<HashMap<String, NpyArray>, NpzError> {
    read_npz_from(std::fs::File::open(path)?)
}

/// Reads every `<name>.npy` member of the archive `reader` holds.
pub fn read_npz_from(
    reader: impl Read + std::io::Seek,
) -> Result<HashMap<String, NpyArray>, NpzError> {
    let mut archive = zip::ZipArchive::new(reader)?;
    let mut out = HashMap::new();
    for i in 0..archive.len() {
        let mut member = archive.by_index(i)?;
        let Some(name) = member.name().strip_suffix(".npy").map(str::to_owned) else {
            continue;
        };
        // The declared size is the archive's claim: reserve no more than a
        // little of it up front (reading grows the buffer as data comes).
        let mut bytes = Vec::with_capacity(member.size().min(1 << 20) as usize);
        member.read_to_end(&mut bytes)?;
        let array = parse_npy(&bytes).map_err(|source| NpzError::Npy {
            name: name.clone(),
            source,
        })?;
        out.insert(name, array);
    }
    Ok(out)
}

/// Parses NPY format versions 1–3 (little- or big-endian numbers, C or
/// Fortran order; Fortran arrays are returned in C order).
pub fn parse_npy(bytes: &[u8]) -> Result<NpyArray, NpyError> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(NpyError::BadMagic);
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            let b = bytes.get(8..12).ok_or(NpyError::TruncatedHeader)?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        v => return Err(NpyError::Version(v)),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or(NpyError::TruncatedHeader)?;
    let header = std::str::from_utf8(header).map_err(|_| NpyError::HeaderNotText)?;
    let descr = dict_value(header, "descr").ok_or(NpyError::MissingKey("descr"))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let fortran =
        dict_value(header, "fortran_order").ok_or(NpyError::MissingKey("fortran_order"))?;
    let shape_text = dict_value(header, "shape").ok_or(NpyError::MissingKey("shape"))?;
    let shape: Vec<usize> = shape_text
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| NpyError::Shape(shape_text.into()))
        })
        .collect::<Result<_, _>>()?;
    let data = &bytes[start + header_len..];
    let values = decode_values(descr, data, &shape, fortran.trim() == "True")?;
    Ok(NpyArray { shape, values })
}

/// The numbers in `data` (NumPy dtype string `descr`, e.g. `<f4`, `|u1`),
/// `shape.product()` of them, returned in C order.
pub fn decode_values(
    descr: &str,
    data: &[u8],
    shape: &[usize],
    fortran: bool,
) -> Result<Vec<f64>, NpyError> {
    let bad_dtype = || NpyError::Dtype(descr.into());
    let little = match descr.as_bytes().first() {
        Some(b'<' | b'|' | b'=') => true,
        Some(b'>') => false,
        _ => return Err(bad_dtype()),
    };
    // The first byte is ASCII, so the rest starts on a character boundary.
    let kind = &descr[1..];
    let size: usize = match kind.as_bytes() {
        [code, ..] if code.is_ascii_alphabetic() => kind[1..].parse().map_err(|_| bad_dtype())?,
        _ => return Err(bad_dtype()),
    };
    let known = matches!(
        (&kind[..1], size),
        ("f", 4 | 8) | ("i" | "u", 1 | 2 | 4 | 8) | ("b", 1)
    );
    if !known {
        return Err(bad_dtype());
    }
    // The shape is the file's claim: its byte count is checked against the
    // data, without overflowing, before anything is allocated.
    let needed = shape
        .iter()
        .try_fold(size, |n, &d| n.checked_mul(d))
        .ok_or_else(|| NpyError::Shape(format!("{shape:?} of {descr} overflows")))?;
    let count = needed / size;
    if data.len() < needed {
        return Err(NpyError::ShortData {
            got: data.len(),
            shape: shape.to_vec(),
            descr: descr.into(),
            needed,
        });
    }
    let word = |chunk: &[u8]| -> [u8; 8] {
        let mut w = [0u8; 8];
        if little {
            w[..size].copy_from_slice(chunk);
        } else {
            for (i, b) in chunk.iter().rev().enumerate() {
                w[i] = *b;
            }
        }
        w
    };
    let chunks = data[..count * size].chunks_exact(size).map(word);
    let values: Vec<f64> = match (&kind[..1], size) {
        ("f", 4) => chunks
            .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]) as f64)
            .collect(),
        ("f", 8) => chunks.map(f64::from_le_bytes).collect(),
        ("i", 1 | 2 | 4 | 8) => chunks
            .map(|w| {
                let shift = 64 - 8 * size as u32;
                ((i64::from_le_bytes(w) << shift) >> shift) as f64
            })
            .collect(),
        ("u", 1 | 2 | 4 | 8) | ("b", 1) => chunks.map(|w| u64::from_le_bytes(w) as f64).collect(),
        _ => return Err(NpyError::Dtype(descr.into())),
    };
    Ok(if fortran && shape.len() > 1 {
        fortran_to_c(&values, shape)
    } else {
        values
    })
}

/// Array data for [`write_npz`], in C order.
pub enum NpyData {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

/// Writes `arrays` as an uncompressed `.npz` (what `numpy.savez` writes).
pub fn write_npz(path: &Path, arrays: &[(&str, Vec<usize>, NpyData)]) -> Result<(), NpzError> {
    use std::io::Write;
    let tmp = path.with_extension("npz.partial");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&tmp)?);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(false);
    for (name, shape, data) in arrays {
        let (descr, bytes): (&str, Vec<u8>) = match data {
            NpyData::F32(v) => ("<f4", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            NpyData::I32(v) => ("<i4", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        };
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let shape_text = match dims.len() {
            1 => format!("({},)", dims[0]),
            _ => format!("({})", dims.join(", ")),
        };
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
        // NumPy pads the header with spaces so the data starts 64-byte aligned.
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        zip.start_file(format!("{name}.npy"), options)?;
        zip.write_all(b"\x93NUMPY\x01\x00")?;
        zip.write_all(&(header.len() as u16).to_le_bytes())?;
        zip.write_all(header.as_bytes())?;
        zip.write_all(&bytes)?;
    }
    zip.finish()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The text of `'key': value` in a Python dict literal (values here never
/// contain a top-level comma outside parentheses).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))?;
    let rest = header[at + key.len() + 2..]
        .trim_start()
        .strip_prefix(':')?;
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

fn fortran_to_c(values: &[f64], shape: &[usize]) -> Vec<f64> {
    let n = values.len();
    let mut out = vec![0.0; n];
    let mut index = vec![0usize; shape.len()];
    for &v in values {
        // `index` walks the array in Fortran order (first axis fastest).
        let mut c = 0;
        for (axis, &i) in index.iter().enumerate() {
            c = c * shape[axis] + i;
        }
        out[c] = v;
        for (axis, i) in index.iter_mut().enumerate() {
            *i += 1;
            if *i < shape[axis] {
                break;
            }
            *i = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn reads_c_and_fortran_order_and_integer_widths() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let c = parse_npy(&npy("<f4", false, "(2, 3)", &data)).unwrap();
        assert_eq!(c.shape, [2, 3]);
        assert_eq!(c.values, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        // The same bytes in Fortran order are the transpose's C order.
        let f = parse_npy(&npy("<f4", true, "(2, 3)", &data)).unwrap();
        assert_eq!(f.values, [1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
        let ints: Vec<u8> = [-1i64, 744].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            parse_npy(&npy("<i8", false, "(2,)", &ints)).unwrap().values,
            [-1.0, 744.0]
        );
        let big: Vec<u8> = [-2i32, 7].iter().flat_map(|v| v.to_be_bytes()).collect();
        assert_eq!(
            parse_npy(&npy(">i4", false, "(2,)", &big)).unwrap().values,
            [-2.0, 7.0]
        );
    }

    #[test]
    fn rejects_short_data_and_unknown_dtypes() {
        let e = parse_npy(&npy("<f4", false, "(4,)", &[0u8; 8])).unwrap_err();
        assert!(e.to_string().contains("needs 16"), "{e}");
        let e = parse_npy(&npy("<c8", false, "(1,)", &[0u8; 8])).unwrap_err();
        assert!(e.to_string().contains("unsupported dtype"), "{e}");
    }
}
