//! Client text quoted back in messages, bounded.
//!
//! An error or rejection may show the client what it sent, but never more than a few hundred
//! bytes of it: a client that sends a 3 MiB `index` must not get (or make the server hold) a 3 MiB
//! message per line.

/// Most bytes of one client-supplied value quoted in a message.
pub const MAX_QUOTED_BYTES: usize = 200;
/// Most bytes of one whole message about a line or request (a quoted value and its sentence).
pub const MAX_MESSAGE_BYTES: usize = 512;

/// `value` between backquotes, cut to [`MAX_QUOTED_BYTES`] with a note saying how long it was.
pub fn quote(value: &str) -> String {
    if value.len() <= MAX_QUOTED_BYTES {
        return format!("`{value}`");
    }
    format!(
        "`{}…` ({} bytes, shown truncated to {MAX_QUOTED_BYTES})",
        prefix(value, MAX_QUOTED_BYTES),
        value.len()
    )
}

/// `message` cut to [`MAX_MESSAGE_BYTES`]: a last guard for messages that embed text from a parser
/// (serde's errors may quote what they read).
pub fn bounded(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let cut = prefix(&message, MAX_MESSAGE_BYTES - " (truncated)".len()).len();
        message.truncate(cut);
        message.push_str(" (truncated)");
    }
    message
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn prefix(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_quoted_whole() {
        assert_eq!(quote("abc"), "`abc`");
        assert_eq!(quote(&"x".repeat(200)), format!("`{}`", "x".repeat(200)));
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary_and_say_so() {
        let value = "é".repeat(1_000_000); // 2 bytes each
        let quoted = quote(&value);
        assert!(quoted.len() < MAX_QUOTED_BYTES + 64, "{}", quoted.len());
        assert!(quoted.starts_with(&format!("`{}…`", "é".repeat(100))));
        assert!(quoted.ends_with("(2000000 bytes, shown truncated to 200)"));
    }

    #[test]
    fn messages_are_bounded() {
        assert_eq!(bounded("short".into()), "short");
        let long = bounded("ü".repeat(10_000));
        assert!(long.len() <= MAX_MESSAGE_BYTES, "{}", long.len());
        assert!(long.ends_with(" (truncated)"));
    }
}
