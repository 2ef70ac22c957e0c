//! Reads the top-level `"index"` of a line that could not be parsed whole: a line cut short
//! (the head of an oversized line) or a line that is not valid JSON further on.
//!
//! It walks the object's top-level keys and skips their values without building them, stopping at
//! `"index"`. It never guesses: anything it cannot read with certainty gives `Probe::Unreadable`.

/// What the probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The line has a top-level `"index"` whose value is this integer.
    Index(i64),
    /// The line has a top-level `"index"` whose value is not an integer.
    NotAnInteger,
    /// The index cannot be read from these bytes.
    Unreadable,
}

/// Looks for the top-level `"index"` key of the JSON object starting `bytes`.
pub fn probe_index(bytes: &[u8]) -> Probe {
    let mut cursor = Cursor { bytes, at: 0 };
    cursor.find_index().unwrap_or(Probe::Unreadable)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&mut self) -> Option<u8> {
        while let Some(&b) = self.bytes.get(self.at) {
            if !matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
                return Some(b);
            }
            self.at += 1;
        }
        None
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn find_index(&mut self) -> Option<Probe> {
        self.expect(b'{')?;
        loop {
            let is_index = self.string()? == b"index";
            self.expect(b':')?;
            if is_index {
                return self.integer();
            }
            self.skip_value()?;
            match self.peek()? {
                b',' => self.at += 1,
                _ => return None,
            }
        }
    }

    /// A string's raw bytes (escapes left as they are: `index` has none worth writing).
    fn string(&mut self) -> Option<&[u8]> {
        self.expect(b'"')?;
        let start = self.at;
        loop {
            match *self.bytes.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    return Some(&self.bytes[start..self.at - 1]);
                }
                b'\\' => self.at += 2,
                _ => self.at += 1,
            }
        }
    }

    fn integer(&mut self) -> Option<Probe> {
        self.peek()?;
        let start = self.at;
        while let Some(&b) = self.bytes.get(self.at) {
            if !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.')) {
                break;
            }
            self.at += 1;
        }
        let end = self.at;
        // The value must be followed by something, or it may have been cut short.
        if self.peek().is_none() || start == end {
            return match self.bytes.get(start) {
                Some(b'"' | b'{' | b'[') => Some(Probe::NotAnInteger),
                _ => None,
            };
        }
        let text = std::str::from_utf8(&self.bytes[start..end]).ok()?;
        Some(match text.parse::<i64>() {
            Ok(index) => Probe::Index(index),
            Err(_) => Probe::NotAnInteger,
        })
    }

    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => self.skip_nested(),
            _ => {
                while let Some(&b) = self.bytes.get(self.at) {
                    if matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace() {
                        return Some(());
                    }
                    self.at += 1;
                }
                None
            }
        }
    }

    fn skip_nested(&mut self) -> Option<()> {
        let mut depth = 0usize;
        loop {
            match *self.bytes.get(self.at)? {
                b'"' => {
                    self.string()?;
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        self.at += 1;
                        return Some(());
                    }
                }
                _ => {}
            }
            self.at += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_index_wherever_it_stands_among_top_level_keys() {
        assert_eq!(probe_index(br#"{"index":3,"task":"t"}"#), Probe::Index(3));
        assert_eq!(
            probe_index(
                br#" { "task" : "a\"}" , "payload":{"index":9,"x":[1,{"y":"]"}]}, "index" : 12 , "#
            ),
            Probe::Index(12)
        );
        assert_eq!(probe_index(br#"{"index":-4}"#), Probe::Index(-4));
    }

    #[test]
    fn cut_or_ambiguous_values_are_unreadable() {
        assert_eq!(probe_index(br#"{"index":12"#), Probe::Unreadable);
        assert_eq!(probe_index(br#"{"payload":"abc"#), Probe::Unreadable);
        assert_eq!(probe_index(br#"{"payload":{"index":1"#), Probe::Unreadable);
        assert_eq!(probe_index(br#"[{"index":1}]"#), Probe::Unreadable);
        assert_eq!(probe_index(b"not json"), Probe::Unreadable);
        assert_eq!(probe_index(br#"{"task":"t"}"#), Probe::Unreadable);
    }

    #[test]
    fn non_integer_index_is_reported_as_such() {
        assert_eq!(probe_index(br#"{"index":"3"}"#), Probe::NotAnInteger);
        assert_eq!(probe_index(br#"{"index":1.5,"#), Probe::NotAnInteger);
        assert_eq!(probe_index(br#"{"index":null}"#), Probe::NotAnInteger);
    }
}
