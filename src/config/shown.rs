//! Words of the file as messages echo them: cut to a few characters and escaped, so that a message
//! is one short line a terminal shows as it is.

use std::path::Path;

/// How many characters of a word a message echoes; the rest is shown as `…`.
const SHOWN_CHARS: usize = 64;

/// A word of the file as a message echoes it: at most [`SHOWN_CHARS`] characters, then `…`, with
/// control and invisible characters escaped (`\x00`, `\u{feff}`), so that a message is one short
/// line that shows what the file holds.
pub(super) fn shown(word: &str) -> String {
    let mut out = escaped(&word.chars().take(SHOWN_CHARS).collect::<String>());
    if word.chars().nth(SHOWN_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// `text` with control and invisible characters escaped.
pub(super) fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_control() {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else if c.is_control() || invisible(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Format characters that show as nothing, or reorder the text around them (bidirectional
/// overrides): a word holding one looks like another word.
pub(super) fn invisible(c: char) -> bool {
    matches!(c,
        '\u{ad}' | '\u{61c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}')
}

/// The path as messages name it: whole, with control characters escaped.
pub(super) fn shown_path(path: &Path) -> String {
    escaped(&path.display().to_string())
}

/// `result` with the word `arg`, which its message quotes as `'arg'`, shown cut and escaped
/// (for messages made elsewhere: ports, options, access rules, resolution).
pub(super) fn echoing<T>(result: Result<T, String>, arg: &str) -> Result<T, String> {
    result.map_err(|message| {
        let short = shown(arg);
        if short == arg {
            message
        } else {
            message.replacen(&format!("'{arg}'"), &format!("'{short}'"), 1)
        }
    })
}
