//! Checksums and number-range rules: Luhn, card issuer prefixes, IBAN lengths and mod-97,
//! SSN ranges. Pure arithmetic on digits, each with its own unit tests.

/// Luhn check over ASCII digits (separators must already be removed).
pub(crate) fn luhn(digits: &[u8]) -> bool {
    if digits.is_empty() {
        return false;
    }
    let mut sum = 0u32;
    for (i, &d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum % 10 == 0
}

/// The leading `n` digits as a number.
fn prefix(digits: &[u8], n: usize) -> u32 {
    digits[..n.min(digits.len())]
        .iter()
        .fold(0, |acc, &d| acc * 10 + u32::from(d - b'0'))
}

/// Whether a card number of this length exists for this issuer prefix (IIN). Unknown prefixes
/// are refused: precision matters more than covering every regional scheme.
pub(crate) fn known_card_prefix(digits: &[u8]) -> bool {
    let len = digits.len();
    let p1 = prefix(digits, 1);
    let p2 = prefix(digits, 2);
    let p3 = prefix(digits, 3);
    let p4 = prefix(digits, 4);
    let p6 = prefix(digits, 6);
    // Visa
    if p1 == 4 {
        return matches!(len, 13 | 16 | 19);
    }
    // Mastercard (51-55 and the 2-series), Mir (2200-2204)
    if (51..=55).contains(&p2) || (2221..=2720).contains(&p4) {
        return len == 16;
    }
    if (2200..=2204).contains(&p4) {
        return (16..=19).contains(&len);
    }
    // American Express
    if p2 == 34 || p2 == 37 {
        return len == 15;
    }
    // Discover, UnionPay
    if p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 || p2 == 62 {
        return (16..=19).contains(&len);
    }
    // JCB
    if (3528..=3589).contains(&p4) {
        return (16..=19).contains(&len);
    }
    // Diners Club
    if (300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39 {
        return (14..=19).contains(&len);
    }
    // Maestro
    if matches!(p4, 5018 | 5020 | 5038 | 5893 | 6304 | 6759 | 6761..=6763) || p6 == 676770 {
        return (13..=19).contains(&len);
    }
    false
}

/// The IBAN length for a country code (upper case), from the SWIFT registry.
pub(crate) fn iban_length(country: [u8; 2]) -> Option<usize> {
    let len = match &country {
        b"NO" => 15,
        b"BE" => 16,
        b"DK" | b"FI" | b"FO" | b"GL" | b"NL" => 18,
        b"MK" | b"SI" => 19,
        b"AT" | b"BA" | b"EE" | b"KZ" | b"LT" | b"LU" | b"XK" => 20,
        b"CH" | b"HR" | b"LI" | b"LV" => 21,
        b"BG" | b"BH" | b"CR" | b"DE" | b"GB" | b"GE" | b"IE" | b"ME" | b"RS" | b"VA" => 22,
        b"AE" | b"GI" | b"IL" | b"IQ" | b"TL" => 23,
        b"AD" | b"CZ" | b"ES" | b"MD" | b"PK" | b"RO" | b"SA" | b"SE" | b"SK" | b"TN" | b"VG" => 24,
        b"LY" | b"PT" | b"ST" => 25,
        b"IS" | b"TR" => 26,
        b"FR" | b"GR" | b"IT" | b"MC" | b"MR" | b"SM" => 27,
        b"AL" | b"AZ" | b"BY" | b"CY" | b"DO" | b"GT" | b"HU" | b"LB" | b"PL" | b"SV" => 28,
        b"BR" | b"EG" | b"PS" | b"QA" | b"UA" => 29,
        b"JO" | b"KW" | b"MU" => 30,
        b"MT" | b"SC" => 31,
        b"LC" => 32,
        _ => return None,
    };
    Some(len)
}

/// ISO 13616 mod-97 over an IBAN's characters (upper-case letters and digits, no spaces).
pub(crate) fn iban_checksum_ok(chars: &[u8]) -> bool {
    if chars.len() < 5 {
        return false;
    }
    let (head, tail) = chars.split_at(4);
    let mut acc = 0u32;
    for &c in tail.iter().chain(head) {
        acc = match c {
            b'0'..=b'9' => (acc * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' => (acc * 100 + u32::from(c - b'A') + 10) % 97,
            _ => return false,
        };
    }
    acc == 1
}

/// Whether `area-group-serial` is in a range the SSA issues: area not 000, 666 or 900-999,
/// group not 00, serial not 0000.
pub(crate) fn ssn_ranges_ok(area: u32, group: u32, serial: u32) -> bool {
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_test_cards_and_refuses_single_digit_changes() {
        for card in [
            "4111111111111111",
            "5555555555554444",
            "378282246310005",
            "6011111111111117",
            "30569309025904",
            "4222222222222",
        ] {
            assert!(luhn(card.as_bytes()), "{card}");
            let mut bad = card.as_bytes().to_vec();
            let last = bad.len() - 1;
            bad[last] = if bad[last] == b'9' {
                b'0'
            } else {
                bad[last] + 1
            };
            assert!(!luhn(&bad), "{card} with last digit changed");
        }
        assert!(!luhn(b""));
    }

    #[test]
    fn card_prefixes_come_with_their_lengths() {
        assert!(known_card_prefix(b"4111111111111111"));
        assert!(!known_card_prefix(b"411111111111111")); // Visa has no 15-digit numbers
        assert!(known_card_prefix(b"378282246310005"));
        assert!(!known_card_prefix(b"3782822463100055"));
        assert!(known_card_prefix(b"2223003122003222"));
        assert!(!known_card_prefix(b"1234567890123452"));
        assert!(!known_card_prefix(b"9999999999999995"));
        // An IMEI is Luhn-valid, 15 digits, and starts with 35 or 49: not a card.
        assert!(!known_card_prefix(b"490154203237518"));
    }

    #[test]
    fn iban_mod97_and_lengths() {
        for iban in [
            "DE89370400440532013000",
            "GB82WEST12345698765432",
            "FR1420041010050500013M02606",
            "NL91ABNA0417164300",
            "NO9386011117947",
        ] {
            let b = iban.as_bytes();
            assert!(iban_checksum_ok(b), "{iban}");
            assert_eq!(iban_length([b[0], b[1]]), Some(b.len()), "{iban}");
        }
        assert!(!iban_checksum_ok(b"DE88370400440532013000"));
        assert!(!iban_checksum_ok(b"GB82WEST12345698765433"));
        assert!(!iban_checksum_ok(b"de89370400440532013000"));
        assert_eq!(iban_length(*b"XX"), None);
    }

    #[test]
    fn ssn_invalid_ranges() {
        assert!(ssn_ranges_ok(123, 45, 6789));
        assert!(ssn_ranges_ok(899, 99, 9999));
        assert!(!ssn_ranges_ok(0, 45, 6789));
        assert!(!ssn_ranges_ok(666, 45, 6789));
        assert!(!ssn_ranges_ok(900, 45, 6789));
        assert!(!ssn_ranges_ok(999, 45, 6789));
        assert!(!ssn_ranges_ok(123, 0, 6789));
        assert!(!ssn_ranges_ok(123, 45, 0));
    }
}
