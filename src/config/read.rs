//! Reading a configuration file: regular files only, a size cap, UTF-8 with the first bad byte
//! located.

use super::shown::shown_path;
use super::{Error, MAX_FILE_BYTES};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Reads a file as text: a regular file (a FIFO would block, a device never end) of at most
/// [`MAX_FILE_BYTES`], in UTF-8.
pub(super) fn read(path: &Path) -> Result<String, String> {
    read_capped(path, MAX_FILE_BYTES)
}

pub(super) fn read_capped(path: &Path, cap: usize) -> Result<String, String> {
    let name = shown_path(path);
    // Non-blocking, so that opening a FIFO does not wait for a writer; no effect on a regular file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("{name}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("{name}: {e}"))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else {
            "a socket"
        };
        return Err(format!("{name}: not a regular file ({what})"));
    }
    let too_large = || {
        let limit = if cap.is_multiple_of(1 << 20) {
            format!("{} MiB", cap >> 20)
        } else {
            format!("{cap} bytes")
        };
        format!("{name}: larger than {limit}, the limit for a configuration file")
    };
    if meta.len() > cap as u64 {
        return Err(too_large());
    }
    // The size may be wrong (procfs says 0) or grow meanwhile: read one byte more than the cap.
    let mut bytes = Vec::new();
    file.take(cap as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{name}: {e}"))?;
    if bytes.len() > cap {
        return Err(too_large());
    }
    decode(bytes).map_err(|e| format!("{name}:{e}"))
}

/// The file's bytes as text, or where the first byte that is not UTF-8 is (columns count bytes,
/// as they do for every error, from after a byte order mark on line 1).
fn decode(bytes: Vec<u8>) -> Result<String, Error> {
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let bad = e.utf8_error().valid_up_to();
        let start = if bytes.starts_with(b"\xef\xbb\xbf") { 3 } else { 0 };
        let before = &bytes[start..bad];
        let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        Error {
            line: before.iter().filter(|&&b| b == b'\n').count() + 1,
            col: before.len() - line_start + 1,
            message: format!(
                "invalid UTF-8 (byte \\x{:02x}): the file must be UTF-8 text",
                bytes[bad]
            ),
        }
    })
}
