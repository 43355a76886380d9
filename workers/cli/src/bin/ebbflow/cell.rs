//! Text from Redis or storage in a table cell: every control character (line breaks, tabs,
//! `ESC` and so an ANSI or OSC sequence, C1 controls) and every invisible formatting character
//! (bidirectional overrides, zero-width marks) escaped as Rust writes it (`\n`, `\u{1b}`), so a
//! forged field can neither start a line of its own nor drive the terminal.

/// `text` as it may be printed in a table.
pub(crate) fn cell(text: &str) -> String {
    text.escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::cell;

    #[test]
    fn control_and_formatting_characters_are_escaped() {
        assert_eq!(cell("orders"), "orders");
        let shown = cell("a\nb\x1b[31mred\x1b]0;title\x07\u{9b}\u{202e}txt");
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
        assert!(!shown.contains('\u{202e}'), "{shown:?}");
        assert!(
            shown.contains("\\n") && shown.contains("\\u{1b}"),
            "{shown}"
        );
    }
}
