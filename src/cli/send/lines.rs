//! Input lines framed exactly as the server frames a body, so that the client's count and indexes
//! match what the server will see: lines end at `\n`, a trailing `\r` is dropped, lines of only
//! spaces, tabs and `\r` are blank (not items), and the last line may lack its newline.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Read buffer for input files.
pub const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Reads one line at a time into a reused buffer: memory is the longest line, whatever the file.
pub struct LineReader<R> {
    reader: R,
    line: Vec<u8>,
    /// 1-based number of the line last read, blank lines included.
    pub number: u64,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            line: Vec::new(),
            number: 0,
        }
    }

    /// The next line with its terminator (as it is in the file), or `None` at the end.
    pub async fn next_raw(&mut self) -> std::io::Result<Option<&[u8]>> {
        self.line.clear();
        let read = self.reader.read_until(b'\n', &mut self.line).await?;
        if read == 0 {
            return Ok(None);
        }
        self.number += 1;
        Ok(Some(&self.line))
    }
}

/// A line without its `\n` and the `\r` before it.
pub fn content(raw: &[u8]) -> &[u8] {
    let line = raw.strip_suffix(b"\n").unwrap_or(raw);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Same rule as the server's framer: only spaces, tabs and `\r`.
pub fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r'))
}

/// Checks that a line is one JSON value, so it can be embedded as an item's `payload` as it is.
pub fn check_payload(line: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(line).map_err(|_| "it is not valid UTF-8".to_owned())?;
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(drop)
        .map_err(|error| format!("it is not valid JSON ({error})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_like_the_server() {
        let body: &[u8] = b"a\r\n\r\n  \t\nbb\n\nccc";
        let mut reader = LineReader::new(body);
        let mut items = Vec::new();
        while let Some(raw) = reader.next_raw().await.unwrap() {
            let line = content(raw);
            if !is_blank(line) {
                let text = String::from_utf8(line.to_vec()).unwrap();
                items.push((reader.number, text));
            }
        }
        let expected = [(1, "a"), (4, "bb"), (6, "ccc")].map(|(n, s)| (n, s.to_owned()));
        assert_eq!(items, expected);
    }

    #[test]
    fn payload_must_be_one_json_value() {
        assert!(check_payload(b"{\"a\":[1,2]}").is_ok());
        assert!(check_payload(b" 42 ").is_ok());
        assert!(check_payload(b"\"text\"").is_ok());
        assert!(check_payload(b"null").is_ok());
        assert!(
            check_payload(b"{\"a\":")
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert!(check_payload(b"1 2").is_err());
        assert!(check_payload(b"hello").is_err());
        assert!(check_payload(b"\"\xff\"").unwrap_err().contains("UTF-8"));
    }
}
