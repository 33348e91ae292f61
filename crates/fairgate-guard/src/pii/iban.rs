//! IBANs: a country code, two check digits and the BBAN, written contiguously or in groups
//! separated by single spaces, upper or lower case. The length must be the country's and the
//! mod-97 checksum must hold, so a random token of the right shape passes about one time in 97.

use super::checks::{iban_checksum_ok, iban_length};

/// Finds IBANs from `from` on. No regex: a candidate starts at two letters followed by two
/// digits, which a byte scan finds faster than any automaton, and the rest is read by the
/// country's length.
pub(super) fn find(text: &str, from: usize, mut found: impl FnMut(usize, usize)) {
    let b = text.as_bytes();
    let mut i = from + 2;
    while i + 1 < b.len() {
        if !(b[i].is_ascii_digit() && b[i + 1].is_ascii_digit()) {
            i += 1;
            continue;
        }
        let s = i - 2;
        if b[s].is_ascii_alphabetic() && b[s + 1].is_ascii_alphabetic() {
            if let Some(e) = check(b, s) {
                found(s, e);
                i = e + 2;
                continue;
            }
        }
        i += 1;
    }
}

/// The end of the IBAN starting at `s`, if there is one.
fn check(b: &[u8], s: usize) -> Option<usize> {
    if s > 0 && (b[s - 1].is_ascii_alphanumeric() || b[s - 1] == b'_') {
        return None;
    }
    let len = iban_length([b[s].to_ascii_uppercase(), b[s + 1].to_ascii_uppercase()])?;
    // Read exactly the country's number of characters, allowing single spaces between them.
    let mut chars = Vec::with_capacity(len);
    let mut i = s;
    while chars.len() < len {
        match b.get(i) {
            Some(c) if c.is_ascii_alphanumeric() => chars.push(c.to_ascii_uppercase()),
            Some(b' ') if i > s && b.get(i + 1).is_some_and(u8::is_ascii_alphanumeric) => {}
            _ => return None,
        }
        i += 1;
    }
    // It must end at a group boundary: "DE89 3704 0044 0532 0130 001" is not an IBAN.
    if b.get(i)
        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
    {
        return None;
    }
    iban_checksum_ok(&chars).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ibans(text: &str) -> Vec<&str> {
        let mut v = Vec::new();
        find(text, 0, |s, e| v.push(&text[s..e]));
        v
    }

    #[test]
    fn printed_and_electronic_forms() {
        assert_eq!(
            ibans("IBAN: DE89 3704 0044 0532 0130 00, BIC COBADEFFXXX"),
            vec!["DE89 3704 0044 0532 0130 00"]
        );
        assert_eq!(
            ibans("GB82WEST12345698765432"),
            vec!["GB82WEST12345698765432"]
        );
        assert_eq!(
            ibans("iban fr14 2004 1010 0505 0001 3m02 606 merci"),
            vec!["fr14 2004 1010 0505 0001 3m02 606"]
        );
        assert_eq!(
            ibans("to NO93 8601 1117 947 and NL91ABNA0417164300"),
            vec!["NO93 8601 1117 947", "NL91ABNA0417164300"]
        );
    }

    #[test]
    fn checksum_length_and_boundaries() {
        assert!(ibans("DE88 3704 0044 0532 0130 00").is_empty());
        assert!(ibans("DE89 3704 0044 0532 0130 001").is_empty());
        assert!(ibans("XDE89370400440532013000").is_empty());
        assert!(ibans("XX89 3704 0044 0532 0130 00").is_empty());
        assert!(ibans("sha ab12cd34ef56ab78cd90ef12ab34cd56").is_empty());
        assert!(ibans("DE89  3704 0044 0532 0130 00").is_empty()); // double blank
                                                                   // A false start does not hide an IBAN right after it.
        assert_eq!(
            ibans("AB12 DE89 3704 0044 0532 0130 00"),
            vec!["DE89 3704 0044 0532 0130 00"]
        );
    }
}
