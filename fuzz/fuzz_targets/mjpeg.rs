//! MJPEG frames: `mjpeg::decode` (header walk, Huffman table insertion,
//! zune-jpeg) and `mjpeg::insert_huffman_tables`. The first four bytes are
//! the frame size the driver claims (two little-endian u16), the rest the
//! JPEG.
#![no_main]

use libfuzzer_sys::fuzz_target;
use posed_capture::mjpeg;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let w = u16::from_le_bytes([data[0], data[1]]) as u32;
    let h = u16::from_le_bytes([data[2], data[3]]) as u32;
    let jpeg = &data[4..];
    let _ = mjpeg::insert_huffman_tables(jpeg);
    if let Ok(img) = mjpeg::decode(jpeg, w, h) {
        assert_eq!((img.width, img.height), (w as usize, h as usize));
        assert_eq!(img.data.len(), img.width * img.height * 3);
    }
});
