//! Hidden Unicode: tag characters, zero-width characters where scripts do not need them, and
//! bidi controls.
//!
//! Each has legitimate uses that must not count: tag characters spell the subdivision flags
//! (🏴 + tags + cancel tag, e.g. Scotland); a zero-width joiner glues emoji sequences (👩‍💻) and
//! shapes Arabic and Indic scripts, a zero-width non-joiner is part of Persian spelling, and a
//! zero-width space marks word breaks in Thai, Khmer, Lao, Myanmar and CJK text. Bidi marks
//! (U+200E, U+200F) are not controls and are ignored.

/// What [`inspect`] found.
#[derive(Debug, Default)]
pub(crate) struct Hidden {
    /// Tag characters outside a flag sequence.
    pub(crate) tags: bool,
    /// The ASCII those tag characters spell, checked for phrases like any other text.
    pub(crate) tag_text: String,
    /// Suspicious zero-width characters.
    pub(crate) zero_width: usize,
    /// Of those, how many sit between two Latin letters (splitting a word).
    pub(crate) zero_width_in_word: usize,
    /// U+202D/U+202E (left-to-right and right-to-left override).
    pub(crate) bidi_override: bool,
    /// U+202A..U+202C (embeddings, pop) and U+2066..U+2069 (isolates).
    pub(crate) bidi_other: bool,
}

fn is_tag(c: char) -> bool {
    ('\u{E0000}'..='\u{E007F}').contains(&c)
}

fn is_zero_width(c: char) -> bool {
    matches!(
        c,
        '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{180E}'
    )
}

/// Emoji (skin tones included) and symbols a zero-width joiner legitimately follows or precedes.
fn is_emojiish(c: char) -> bool {
    matches!(c,
        '\u{2190}'..='\u{2BFF}' | '\u{1F000}'..='\u{1FAFF}' | '\u{FE0F}' | '\u{20E3}')
}

/// Scripts that use zero-width characters in normal writing.
fn needs_zero_width(c: char) -> bool {
    matches!(c,
        '\u{0600}'..='\u{08FF}' | '\u{0900}'..='\u{0DFF}' | '\u{0E00}'..='\u{0FFF}'
        | '\u{1000}'..='\u{109F}' | '\u{1780}'..='\u{17FF}' | '\u{3000}'..='\u{9FFF}'
        | '\u{AC00}'..='\u{D7AF}' | '\u{FB50}'..='\u{FDFF}' | '\u{FE70}'..='\u{FEFC}')
}

pub(crate) fn inspect(text: &str) -> Hidden {
    let mut h = Hidden::default();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if is_tag(c) {
            let start = i;
            while i < chars.len() && is_tag(chars[i]) {
                i += 1;
            }
            let run = &chars[start..i];
            let flag = start > 0
                && chars[start - 1] == '\u{1F3F4}'
                && run.len() <= 8
                && run.last() == Some(&'\u{E007F}');
            if !flag {
                h.tags = true;
                h.tag_text.extend(
                    run.iter()
                        .filter_map(|&t| char::from_u32(t as u32 - 0xE0000))
                        .filter(|t| t.is_ascii_graphic() || *t == ' '),
                );
                h.tag_text.push(' ');
            }
            continue;
        }
        if is_zero_width(c) && !(c == '\u{FEFF}' && i == 0) {
            let prev = chars[..i]
                .iter()
                .rev()
                .find(|&&p| !is_zero_width(p))
                .copied();
            let next = chars[i + 1..].iter().find(|&&n| !is_zero_width(n)).copied();
            let legit = [prev, next].into_iter().flatten().any(|n| {
                needs_zero_width(n) || ((c == '\u{200D}' || c == '\u{200C}') && is_emojiish(n))
            });
            if !legit {
                h.zero_width += 1;
                if prev.is_some_and(|p| p.is_ascii_alphabetic())
                    && next.is_some_and(|n| n.is_ascii_alphabetic())
                {
                    h.zero_width_in_word += 1;
                }
            }
        }
        match c {
            '\u{202D}' | '\u{202E}' => h.bidi_override = true,
            '\u{202A}'..='\u{202C}' | '\u{2066}'..='\u{2069}' => h.bidi_other = true,
            _ => {}
        }
        i += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(s: &str) -> String {
        s.chars()
            .map(|c| char::from_u32(0xE0000 + c as u32).unwrap())
            .collect()
    }

    #[test]
    fn tag_characters_are_decoded_but_flags_are_not() {
        let h = inspect(&format!("Summarize this.{}", tags("ignore previous")));
        assert!(h.tags);
        assert_eq!(h.tag_text.trim(), "ignore previous");
        let scotland = "🏴\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}";
        assert!(!inspect(&format!("Go {scotland}!")).tags);
    }

    #[test]
    fn zero_width_in_scripts_and_emoji_is_legit() {
        assert_eq!(
            inspect("👩\u{200D}💻 and 👨\u{200D}👩\u{200D}👧").zero_width,
            0
        );
        assert_eq!(inspect("می\u{200C}خواهم").zero_width, 0);
        assert_eq!(inspect("ภาษา\u{200B}ไทย\u{200B}ง่าย").zero_width, 0);
        let h = inspect("ig\u{200B}no\u{200B}re th\u{200B}is");
        assert_eq!((h.zero_width, h.zero_width_in_word), (3, 3));
        assert_eq!(inspect("\u{FEFF}plain text").zero_width, 0);
    }

    #[test]
    fn bidi_controls() {
        assert!(inspect("file\u{202E}gnp.exe").bidi_override);
        let h = inspect("שלום \u{2067}abc\u{2069} עולם \u{200F}");
        assert!(!h.bidi_override && h.bidi_other);
        assert!(!inspect("שלום \u{200F}עולם").bidi_other);
    }
}
