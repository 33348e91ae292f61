//! Streaming serde plumbing shared by the request parser, the response reader and the stream relay.
//!
//! Everything here walks a JSON document once, in document order, without building a
//! `serde_json::Value` tree. A [`Handler`] says what to do with one value wherever it sits;
//! [`Seed`] turns a handler into a `DeserializeSeed` so it can be handed to
//! `next_value_seed` / `next_element_seed`. Type mismatches are never serde errors here: a
//! handler receives the mismatching value as a [`Shape`] and turns it into its own result, so
//! serde errors only ever mean "this is not valid JSON". That is what lets the request parser
//! report both serde's line/column for syntax errors and precise field paths for type errors
//! from a single pass.
//!
//! Duplicate keys: every caller keeps the *last* occurrence of a key (earlier values are still
//! parsed, so syntax is checked, and then overwritten). That is what Python's `json` module, and
//! therefore vLLM and most OpenAI-compatible servers, do, so the gateway sees the same request
//! the upstream will.

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;

/// A JSON value reduced to what validation and accounting need: containers are skipped
/// (syntax-checked, not kept) and strings keep only their byte length.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Shape {
    Null,
    Bool(bool),
    /// A non-negative integer that fits in `u64`.
    UInt(u64),
    /// A negative integer that fits in `i64`.
    NegInt(i64),
    /// Any other number (fraction, exponent, or beyond the integer ranges).
    Float(f64),
    /// A string of `len` UTF-8 bytes after unescaping.
    Str {
        len: usize,
    },
    Array,
    Object,
}

impl Shape {
    /// The JSON type name used in error messages ("got string").
    pub(crate) fn kind_name(self) -> &'static str {
        match self {
            Shape::Null => "null",
            Shape::Bool(_) => "boolean",
            Shape::UInt(_) | Shape::NegInt(_) | Shape::Float(_) => "number",
            Shape::Str { .. } => "string",
            Shape::Array => "array",
            Shape::Object => "object",
        }
    }

    /// `true` for a string with at least one byte.
    pub(crate) fn is_non_empty_str(self) -> bool {
        matches!(self, Shape::Str { len } if len > 0)
    }
}

/// What to do with one JSON value. Defaults skip containers and report them as a [`Shape`],
/// so a handler only overrides the container kinds it actually descends into.
pub(crate) trait Handler<'de>: Sized {
    type Out;

    /// Any value not handled by a more specific method below.
    fn scalar(self, shape: Shape) -> Self::Out;

    /// A string; `s` is already unescaped (borrowed from the input or from serde_json's
    /// reusable scratch buffer, so calling this allocates nothing).
    fn string(self, s: &str) -> Self::Out {
        self.scalar(Shape::Str { len: s.len() })
    }

    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Out, A::Error> {
        skip_seq(&mut seq)?;
        Ok(self.scalar(Shape::Array))
    }

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        skip_map(&mut map)?;
        Ok(self.scalar(Shape::Object))
    }
}

/// Consumes (and syntax-checks) the rest of a sequence.
pub(crate) fn skip_seq<'de, A: SeqAccess<'de>>(seq: &mut A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Consumes (and syntax-checks) the rest of a map.
pub(crate) fn skip_map<'de, A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Adapts a [`Handler`] to serde's `DeserializeSeed`.
pub(crate) struct Seed<H>(pub H);

impl<'de, H: Handler<'de>> DeserializeSeed<'de> for Seed<H> {
    type Value = H::Out;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<H::Out, D::Error> {
        deserializer.deserialize_any(HandlerVisitor(self.0, PhantomData))
    }
}

struct HandlerVisitor<'de, H>(H, PhantomData<&'de ()>);

impl<'de, H: Handler<'de>> Visitor<'de> for HandlerVisitor<'de, H> {
    type Value = H::Out;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<H::Out, E> {
        Ok(self.0.scalar(Shape::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<H::Out, E> {
        // serde_json only uses i64 for negative numbers, but other callers may not.
        Ok(self.0.scalar(match u64::try_from(v) {
            Ok(u) => Shape::UInt(u),
            Err(_) => Shape::NegInt(v),
        }))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<H::Out, E> {
        Ok(self.0.scalar(Shape::UInt(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<H::Out, E> {
        Ok(self.0.scalar(Shape::Float(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<H::Out, E> {
        Ok(self.0.string(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<H::Out, E> {
        Ok(self.0.scalar(Shape::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<H::Out, E> {
        Ok(self.0.scalar(Shape::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<H::Out, D::Error> {
        Seed(self.0).deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<H::Out, A::Error> {
        self.0.seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<H::Out, A::Error> {
        self.0.map(map)
    }
}

/// The trivial handler: just the value's [`Shape`].
pub(crate) struct ShapeOf;

impl Handler<'_> for ShapeOf {
    type Out = Shape;

    fn scalar(self, shape: Shape) -> Shape {
        shape
    }
}

/// Reads an object key and classifies it with `F` without allocating (escaped keys are
/// unescaped into serde_json's scratch buffer, so `"mod\u0065l"` is still `model`, exactly as
/// the upstream's parser will read it).
pub(crate) struct KeySeed<F>(pub F);

impl<'de, K, F: FnOnce(&str) -> K> DeserializeSeed<'de> for KeySeed<F> {
    type Value = K;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<K, D::Error> {
        deserializer.deserialize_str(KeyVisitor(self.0))
    }
}

struct KeyVisitor<F>(F);

impl<K, F: FnOnce(&str) -> K> Visitor<'_> for KeyVisitor<F> {
    type Value = K;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<K, E> {
        Ok((self.0)(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(json: &str) -> Shape {
        let mut de = serde_json::Deserializer::from_str(json);
        Seed(ShapeOf).deserialize(&mut de).unwrap()
    }

    #[test]
    fn shapes_of_every_json_type() {
        assert_eq!(shape("null"), Shape::Null);
        assert_eq!(shape("true"), Shape::Bool(true));
        assert_eq!(shape("7"), Shape::UInt(7));
        assert_eq!(shape("-7"), Shape::NegInt(-7));
        assert_eq!(shape("1.5"), Shape::Float(1.5));
        assert_eq!(shape("1e3"), Shape::Float(1000.0));
        assert_eq!(
            shape("18446744073709551616"),
            Shape::Float(18446744073709551616.0)
        );
        assert_eq!(shape(r#""h\u00e9""#), Shape::Str { len: 3 });
        assert_eq!(shape("[1,[2],{}]"), Shape::Array);
        assert_eq!(shape(r#"{"a":[1]}"#), Shape::Object);
    }

    #[test]
    fn escaped_keys_are_unescaped_before_matching() {
        let mut de = serde_json::Deserializer::from_str(r#""mod\u0065l""#);
        let is_model = KeySeed(|k: &str| k == "model")
            .deserialize(&mut de)
            .unwrap();
        assert!(is_model);
    }
}
