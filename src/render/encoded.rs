//! A body part encoded once per issue: the lines that hold nothing per recipient are given CRLF
//! line ends and quoted-printable encoded when the issue is rendered, so each message encodes
//! only the few lines that carry its greeting or unsubscribe link. The bytes are those lettre's
//! own `Body::new` makes of the whole part (tested against it).

use email_encoding::body::Encoding;
use lettre::message::Body;
use lettre::message::header::ContentTransferEncoding;

use super::{Marks, Segment, fill, segments};

/// One line of a part.
#[derive(Debug, Clone)]
enum Line {
    /// Nothing per recipient: the line with its line end as 7bit, and quoted-printable.
    Fixed { seven_bit: String, quoted: String },
    /// A line with a greeting or an unsubscribe link in it, and whether a line end follows
    /// (not after a last line without one). Which line end depends on how the filled line
    /// ends.
    Filled(Vec<Segment>, bool),
}

/// A part's lines, ready to be put together for each recipient.
#[derive(Debug, Clone)]
pub(super) struct EncodedPart {
    /// The whole part, to fill in before choosing its encoding (and for lettre, when this
    /// shortcut does not apply).
    whole: Vec<Segment>,
    capacity: usize,
    lines: Vec<Line>,
}

/// What lettre puts after a line: a `\n` becomes `\r\n`, unless a `\r` is already there.
fn line_end(line: &str) -> &'static str {
    if line.ends_with('\r') { "\n" } else { "\r\n" }
}

impl EncodedPart {
    /// Splits `rendered` (the part with the marks still in it) into lines and encodes those
    /// without a mark.
    pub(super) fn new(rendered: &str, marks: &Marks) -> Self {
        let mut pieces: Vec<&str> = rendered.split('\n').collect();
        // "a\n" splits into "a" and "": the empty last piece is not a line.
        let last_has_end = pieces.last().is_some_and(|l| l.is_empty());
        if last_has_end {
            pieces.pop();
        }
        let count = pieces.len();
        let lines = pieces
            .into_iter()
            .enumerate()
            .map(|(i, line)| {
                let ended = i + 1 < count || last_has_end;
                match segments(line, marks).as_slice() {
                    [Segment::Lit(text)] => {
                        let end = if ended { line_end(text) } else { "" };
                        let seven_bit = format!("{text}{end}");
                        let quoted = quoted(&seven_bit);
                        Line::Fixed { seven_bit, quoted }
                    }
                    many => Line::Filled(many.to_vec(), ended),
                }
            })
            .collect();
        Self {
            whole: segments(rendered, marks),
            capacity: rendered.len() + 256,
            lines,
        }
    }

    /// The part filled in with `unsubscribe` and `greeting`, as it reads (not encoded).
    pub(super) fn filled(&self, unsubscribe: &str, greeting: &str) -> String {
        fill(&self.whole, unsubscribe, greeting, self.capacity)
    }

    /// The part for one recipient, filled in with `unsubscribe` and `greeting` and encoded as
    /// lettre would encode it; or, where this shortcut does not apply, the filled-in part for
    /// lettre to encode: an encoding other than 7bit or quoted-printable (base64, for a part
    /// mostly not ASCII), or a value with a line break in it.
    pub(super) fn body(&self, unsubscribe: &str, greeting: &str) -> Result<Body, String> {
        let whole = self.filled(unsubscribe, greeting);
        let breaks = |s: &str| s.contains(['\r', '\n']);
        if breaks(unsubscribe) || breaks(greeting) {
            return Err(whole);
        }
        let (encoding, quote) = match Encoding::choose(whole.as_str(), false) {
            Encoding::SevenBit => (ContentTransferEncoding::SevenBit, false),
            Encoding::QuotedPrintable => (ContentTransferEncoding::QuotedPrintable, true),
            _ => return Err(whole),
        };
        let mut out = String::with_capacity(whole.len() + whole.len() / 8);
        for line in &self.lines {
            match line {
                Line::Fixed { seven_bit, quoted } => {
                    out.push_str(if quote { quoted } else { seven_bit });
                }
                Line::Filled(segments, ended) => {
                    let mut text = fill(segments, unsubscribe, greeting, 256);
                    if *ended {
                        text.push_str(line_end(&text));
                    }
                    if quote {
                        out.push_str(&self::quoted(&text));
                    } else {
                        out.push_str(&text);
                    }
                }
            }
        }
        Ok(Body::dangerous_pre_encoded(out.into_bytes(), encoding))
    }
}

/// Quoted-printable, exactly as lettre encodes a body (the same crate, in text mode).
fn quoted(text: &str) -> String {
    quoted_printable::encode_to_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random parts made of what trips encoders up (trailing blanks, `=`, dots, non-ASCII,
    /// CRs, lines either side of 76 characters), with the marks anywhere, filled with random
    /// values: each must come out as lettre encodes the whole part.
    #[test]
    fn encoding_line_by_line_gives_lettres_bytes() {
        let marks = Marks::new();
        let pieces = [
            "a",
            "word ",
            " ",
            "\t",
            "=",
            ".",
            "..",
            "é",
            "€",
            "\r",
            "\n",
            "\n",
            "\n",
            "\r\n",
            "<a href=\"",
            "?x=1&y=2",
            "-- ",
            "\n.",
            "\n. \n",
        ];
        let long = [
            "x".repeat(70),
            "y".repeat(74),
            "z".repeat(75),
            "w".repeat(120),
        ];
        let values = [
            "https://example.com/unsubscribe/abc.DEF_123-xyz",
            "Hi there,",
            "Hi Zoë Ümlaut,",
            "Hi   ,",
            "Hi =?utf-8?q?x?=,",
            ".",
            "",
            "Hi 漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字,",
        ];
        let mut rng = fastrand::Rng::with_seed(16);
        let (mut quoted, mut seven_bit, mut other) = (0, 0, 0);
        for _ in 0..3000 {
            let mut template = String::new();
            for _ in 0..rng.usize(1..60) {
                match rng.usize(0..20) {
                    0 => template.push_str(&marks.unsubscribe),
                    1 => template.push_str(&marks.greeting),
                    2 => template.push_str(&long[rng.usize(0..long.len())]),
                    _ => template.push_str(pieces[rng.usize(0..pieces.len())]),
                }
            }
            let unsubscribe = values[rng.usize(0..values.len())];
            let greeting = values[rng.usize(0..values.len())];
            let whole = fill(&segments(&template, &marks), unsubscribe, greeting, 0);
            let expected = Body::new(whole.clone());
            match EncodedPart::new(&template, &marks).body(unsubscribe, greeting) {
                Ok(body) => {
                    assert_eq!(
                        String::from_utf8_lossy(body.as_ref()),
                        String::from_utf8_lossy(expected.as_ref()),
                        "template {template:?}"
                    );
                    assert_eq!(body.encoding(), expected.encoding());
                    match body.encoding() {
                        ContentTransferEncoding::QuotedPrintable => quoted += 1,
                        _ => seven_bit += 1,
                    }
                }
                Err(filled) => {
                    assert_eq!(filled, whole);
                    assert_eq!(expected.encoding(), ContentTransferEncoding::Base64);
                    other += 1;
                }
            }
        }
        // Every branch was taken often enough to mean something.
        assert!(
            quoted > 500 && seven_bit > 100 && other > 20,
            "{quoted} {seven_bit} {other}"
        );
    }

    #[test]
    fn a_value_with_a_line_break_is_left_to_lettre() {
        let marks = Marks::new();
        let template = format!("Hello\n{}\nbye\n", marks.greeting);
        let part = EncodedPart::new(&template, &marks);
        assert_eq!(
            part.body("u", "Hi\nthere").err().as_deref(),
            Some("Hello\nHi\nthere\nbye\n")
        );
        assert!(part.body("u", "Hi there").is_ok());
    }
}
