//! Bad and unusual files, generated at run time (no committed binaries).
//! Each must decode to a sane RGB image or give the expected error; nothing panics.

mod common;

use common::corpus::{Format, card, encode, with_exif_orientation};
use common::*;
use image::{DynamicImage, Rgb, RgbImage};

fn png(img: &DynamicImage) -> Vec<u8> {
    encode(img, Format::Png)
}

fn jpeg(img: &RgbImage) -> Vec<u8> {
    encode(&DynamicImage::ImageRgb8(img.clone()), Format::Jpeg)
}

fn webp_lossless(img: &RgbImage) -> Vec<u8> {
    encode(&DynamicImage::ImageRgb8(img.clone()), Format::WebP)
}
use pomona_runner::{DecodeError, Preprocess};

fn pre() -> Preprocess {
    Preprocess::default()
}

fn real_jpeg() -> Vec<u8> {
    std::fs::read(&sample_images()[0]).unwrap()
}

fn is_red(p: &Rgb<u8>) -> bool {
    p[0] > 200 && p[1] < 60 && p[2] < 60
}

#[test]
fn empty_file() {
    assert_eq!(pre().decode(&[]), Err(DecodeError::Empty));
}

#[test]
fn text_named_jpg() {
    let text = b"this is not an image, despite the .jpg name\n";
    assert_eq!(pre().decode(text), Err(DecodeError::UnknownFormat));
    assert_eq!(
        DecodeError::UnknownFormat.to_string(),
        "unknown image format"
    );
}

#[test]
fn gif_is_unsupported_format() {
    let err = pre()
        .decode(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")
        .unwrap_err();
    assert_eq!(err, DecodeError::UnsupportedFormat("gif".into()));
}

#[test]
fn truncated_jpeg_is_corrupt() {
    let full = real_jpeg();
    let err = pre().decode(&full[..full.len() / 2]).unwrap_err();
    assert!(matches!(err, DecodeError::Corrupt(_)), "{err:?}");
    assert!(
        err.to_string().starts_with("truncated or corrupt image: "),
        "{err}"
    );
}

#[test]
fn garbage_after_png_signature_is_corrupt() {
    let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
    b.extend_from_slice(&[0x42; 64]);
    assert!(matches!(pre().decode(&b), Err(DecodeError::Corrupt(_))));
}

/// Cutting files at many points never panics and never yields a bogus size.
#[test]
fn prefixes_never_panic() {
    let p = pre();
    let files = [
        real_jpeg(),
        png(&DynamicImage::ImageRgb8(card())),
        webp_lossless(&card()),
    ];
    for f in &files {
        for cut in (0..f.len()).step_by(7) {
            if let Ok(img) = p.decode(&f[..cut]) {
                assert!(img.width() > 0 && img.height() > 0);
            }
        }
        // Flip one byte at a time in the first 200 bytes.
        for i in 0..f.len().min(200) {
            let mut g = f.clone();
            g[i] ^= 0x5A;
            let _ = p.decode(&g);
        }
    }
}

#[test]
fn sixteen_bit_png() {
    let img =
        image::ImageBuffer::<Rgb<u16>, _>::from_fn(5, 4, |x, _| Rgb([x as u16 * 16000, 65535, 0]));
    let rgb = pre().decode(&png(&DynamicImage::ImageRgb16(img))).unwrap();
    assert_eq!(rgb.dimensions(), (5, 4));
    for (x, _, p) in rgb.enumerate_pixels() {
        let want = (f64::from(x) * 16000.0 / 257.0).round() as i32;
        assert!(
            (i32::from(p[0]) - want).abs() <= 1 && p[1] == 255 && p[2] == 0,
            "{p:?}"
        );
    }
}

#[test]
fn rgba_png_composites_over_white() {
    let img = image::RgbaImage::from_fn(4, 1, |x, _| match x {
        0 => image::Rgba([0, 0, 0, 0]),       // transparent black → white
        1 => image::Rgba([10, 200, 30, 255]), // opaque → unchanged
        2 => image::Rgba([0, 0, 0, 128]),     // half black → mid grey
        _ => image::Rgba([255, 0, 0, 0]),     // transparent red → white
    });
    let rgb = pre().decode(&png(&DynamicImage::ImageRgba8(img))).unwrap();
    assert_eq!(
        rgb.as_raw(),
        &[255, 255, 255, 10, 200, 30, 127, 127, 127, 255, 255, 255]
    );
}

#[test]
fn grayscale_and_grayscale_alpha_png() {
    let l = image::GrayImage::from_fn(3, 2, |x, _| image::Luma([x as u8 * 100]));
    let rgb = pre().decode(&png(&DynamicImage::ImageLuma8(l))).unwrap();
    assert_eq!(rgb.get_pixel(2, 1), &Rgb([200, 200, 200]));
    let la = image::GrayAlphaImage::from_fn(2, 1, |x, _| {
        image::LumaA([50, if x == 0 { 255 } else { 0 }])
    });
    let rgb = pre().decode(&png(&DynamicImage::ImageLumaA8(la))).unwrap();
    assert_eq!(rgb.as_raw(), &[50, 50, 50, 255, 255, 255]);
}

#[test]
fn webp_lossless_roundtrip() {
    let src = card();
    let bytes = webp_lossless(&src);
    assert_eq!(&bytes[8..12], b"WEBP");
    assert_eq!(pre().decode(&bytes).unwrap(), src);
}

#[test]
fn exif_orientation_6_rotates_90_cw() {
    let plain = jpeg(&card());
    let upright = pre().decode(&plain).unwrap();
    assert_eq!(upright.dimensions(), (40, 20));
    assert!(is_red(upright.get_pixel(2, 2)));

    let rotated = pre().decode(&with_exif_orientation(&plain, 6)).unwrap();
    // 90° clockwise: 40x20 → 20x40, top-left block → top-right.
    assert_eq!(rotated.dimensions(), (20, 40));
    assert!(
        is_red(rotated.get_pixel(17, 2)),
        "{:?}",
        rotated.get_pixel(17, 2)
    );
    assert!(!is_red(rotated.get_pixel(2, 2)));
    assert!(!is_red(rotated.get_pixel(17, 37)));

    // Orientation 1 is a no-op; a corrupt EXIF value is ignored, not fatal.
    assert_eq!(
        pre().decode(&with_exif_orientation(&plain, 1)).unwrap(),
        upright
    );
    assert_eq!(
        pre().decode(&with_exif_orientation(&plain, 99)).unwrap(),
        upright
    );
}

/// CMYK JPEG written by PIL (needs `POMONA_PYTHON`).
#[test]
fn cmyk_jpeg() {
    let src_path = &sample_images()[0];
    let out = scratch_dir("cmyk").join("cmyk.jpg");
    run_oracle(&[
        "--make-cmyk",
        src_path.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&out).unwrap();
    let rgb = pre().decode(&bytes).unwrap();
    let reference = pre().decode(&std::fs::read(src_path).unwrap()).unwrap();
    assert_eq!(rgb.dimensions(), reference.dimensions());
    // PIL's RGB→CMYK is C=255-R, M=255-G, Y=255-B, K=0, so decoding must give
    // back roughly the original colours (not an inverted image).
    let mean: f64 = rgb
        .as_raw()
        .iter()
        .zip(reference.as_raw())
        .map(|(a, b)| f64::from(a.abs_diff(*b)))
        .sum::<f64>()
        / rgb.as_raw().len() as f64;
    assert!(mean < 6.0, "CMYK decode mean abs diff {mean}");
    let _ = std::fs::remove_dir_all(out.parent().unwrap());
}

#[test]
fn real_images_decode_to_100x100_rgb() {
    for p in sample_images() {
        let img = pre().decode(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(img.dimensions(), (100, 100), "{}", p.display());
    }
}

#[test]
fn format_comes_from_content() {
    // decode() never sees a name: a PNG, JPEG and WebP of the same card all decode.
    for bytes in [
        png(&DynamicImage::ImageRgb8(card())),
        webp_lossless(&card()),
    ] {
        assert_eq!(pre().decode(&bytes).unwrap(), card());
    }
    assert_eq!(pre().decode(&jpeg(&card())).unwrap().dimensions(), (40, 20));
}
