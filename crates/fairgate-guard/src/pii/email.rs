//! E-mail addresses, including the bracketed obfuscations `name [at] example [dot] org` and
//! `name(at)example(dot)org`.
//!
//! Local parts and domain labels may use Latin letters with diacritics (`zoë@exemple.fr`) but
//! not other scripts, so an address glued to CJK or Cyrillic text starts where the Latin does.
//! File names with a density suffix (`icon@2x.png`) and scoped package names (`@types/node`)
//! are not addresses, and neither are SSH remotes (`git@github.com:org/repo.git`).

use regex::Regex;

use super::bounds::{each_candidate, Step};

const AT: &str = r"(?:@|[ \t]*[\[(][ \t]*(?i:at)[ \t]*[\])][ \t]*)";
const DOT: &str = r"(?:\.|[ \t]*[\[(][ \t]*(?i:dot)[ \t]*[\])][ \t]*)";

const LOCAL: &str = r"[A-Za-z0-9\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{24F}._%+'\-]+";
const LABEL: &str = r"[A-Za-z0-9\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{24F}\-]+";
const TLD: &str = r"(?:[A-Za-z]{2,24}|[Xx][Nn]--[A-Za-z0-9\-]{2,59})";

/// Two automata for one grammar: the plain spelling, which runs on every text with an '@',
/// and the one that also accepts bracketed `at` and `dot`, which is several times slower and
/// only runs when the text has a bracketed `at`.
pub(super) struct Regexes {
    plain: Regex,
    obfuscated: Regex,
}

impl Regexes {
    pub(super) fn new() -> Regexes {
        Regexes {
            plain: Regex::new(&format!(r"{LOCAL}@(?:{LABEL}\.)+{TLD}"))
                .expect("builtin e-mail regex"),
            obfuscated: Regex::new(&format!("{LOCAL}{AT}(?:{LABEL}{DOT})+{TLD}"))
                .expect("builtin e-mail regex"),
        }
    }

    pub(super) fn find(&self, text: &str, from: usize, mut found: impl FnMut(usize, usize)) {
        let b = &text.as_bytes()[from..];
        if b.contains(&b'@') {
            each_candidate(
                &self.plain,
                text,
                from,
                |s, e| check(text, s, e),
                &mut found,
            );
        }
        if obfuscated_at(b) {
            // Also finds the plain addresses again; the engine keeps one of each overlap.
            each_candidate(
                &self.obfuscated,
                text,
                from,
                |s, e| check(text, s, e),
                &mut found,
            );
        }
    }
}

/// Extensions that are not top-level domains but follow `name@2x.` in asset file names.
const FILE_EXTENSIONS: [&str; 16] = [
    "png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "tif", "tiff", "pdf", "css", "js",
    "ts", "html", "json",
];

/// Whether the text contains a bracketed `at` (`[at]`, `(AT)`, `[at ]`), so the automaton
/// must run over all of it rather than only around each '@'.
fn obfuscated_at(b: &[u8]) -> bool {
    b.windows(3).any(|w| {
        (w[2] == b']' || w[2] == b')')
            && w[0].eq_ignore_ascii_case(&b'a')
            && w[1].eq_ignore_ascii_case(&b't')
    }) || b.windows(4).any(|w| {
        (w[3] == b']' || w[3] == b')')
            && w[0].eq_ignore_ascii_case(&b'a')
            && w[1].eq_ignore_ascii_case(&b't')
            && w[2] == b' '
    })
}

fn check(text: &str, s: usize, e: usize) -> Step {
    let b = text.as_bytes();
    // Punctuation allowed inside a local part is not part of it at its start: ".bob@x.org".
    let mut start = s;
    while start < e && matches!(b[start], b'.' | b'_' | b'%' | b'+' | b'-' | b'\'') {
        start += 1;
    }
    let cand = &text[start..e];
    // The local part cannot contain '@', brackets or blanks, so it ends at the first of them.
    let Some(at) = cand.find(['@', '[', '(', ' ', '\t']) else {
        return Step::Skip(e);
    };
    let local = &cand[..at];
    if local.is_empty() || local.len() > 64 || local.ends_with('.') || local.contains("..") {
        return Step::Skip(e);
    }
    let tld_start = cand
        .char_indices()
        .rev()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '-'))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let tld = cand[tld_start..].to_ascii_lowercase();
    if FILE_EXTENSIONS.contains(&tld.as_str()) {
        return Step::Skip(e);
    }
    // An SSH remote ("git@github.com:org/repo.git") is a host login, not a mailbox.
    if text[e..].starts_with(':')
        && text[e + 1..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '/')
    {
        return Step::Skip(e);
    }
    // "bob@example.com2" or "bob@example.comé" is not an address ending at "com"; CJK text
    // right after an address is fine.
    if let Some(c) = text[e..].chars().next() {
        if c.is_ascii_alphanumeric() || c == '_' || ('\u{C0}'..='\u{24F}').contains(&c) {
            return Step::Skip(e);
        }
    }
    Step::Accept(start, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emails(text: &str) -> Vec<&str> {
        let mut v = Vec::new();
        Regexes::new().find(text, 0, |s, e| v.push(&text[s..e]));
        v.sort_by_key(|e| text.find(e));
        v.dedup();
        v
    }

    #[test]
    fn plain_addresses() {
        assert_eq!(
            emails("Write to Jane.Doe+news@mail.example.co.uk, or to bob@example.org."),
            vec!["Jane.Doe+news@mail.example.co.uk", "bob@example.org"]
        );
        assert_eq!(emails("<ops@example.com>"), vec!["ops@example.com"]);
        assert_eq!(emails("请联系bob@example.com获取"), vec!["bob@example.com"]);
        assert_eq!(emails("zoë@exemple.fr"), vec!["zoë@exemple.fr"]);
        assert_eq!(emails("o'connor@example.ie"), vec!["o'connor@example.ie"]);
        assert_eq!(emails("say 'bob@example.com'"), vec!["bob@example.com"]);
    }

    #[test]
    fn obfuscated_addresses() {
        assert_eq!(
            emails("mail jane.doe [at] example [dot] org today"),
            vec!["jane.doe [at] example [dot] org"]
        );
        assert_eq!(
            emails("bob(AT)example(DOT)com"),
            vec!["bob(AT)example(DOT)com"]
        );
        assert!(emails("look at this dot com bubble").is_empty());
    }

    #[test]
    fn lookalikes_are_not_addresses() {
        for t in [
            "icon@2x.png",
            "logo@3x.webp and sprite@2x.svg",
            "npm i @types/node",
            "@app.route('/')",
            "root@localhost",
            "user@host",
            "a..b@example.com",
            "bob@example.com2x",
            "git clone git@github.com:org/repo.git",
        ] {
            assert!(emails(t).is_empty(), "{t}: {:?}", emails(t));
        }
    }
}
