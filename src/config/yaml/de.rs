//! serde `Deserializer` over `Node`, with errors that know their node, and the retry loop that
//! lets `from_node_all` report many independent errors.

use std::collections::HashSet;
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, Expected, MapAccess, SeqAccess, Unexpected,
    VariantAccess, Visitor,
};

use super::{
    IntError, Node, ScalarKind, Value, parse_bool, parse_float, parse_int, push_index, push_key, sort_diagnostics,
};
use crate::config::error::{Diagnostic, Span};

/// Each round fixes at least one entry; a bound keeps a pathological document from taking forever.
const MAX_ROUNDS: usize = 100;

/// Deserialize, stopping at the first error.
pub fn from_node<T: DeserializeOwned>(node: &Node) -> Result<T, Diagnostic> {
    let removed = HashSet::new();
    let de = De::root(node, &removed);
    T::deserialize(de).map_err(|e| de.locate(e).into_diagnostic())
}

/// Deserialize and collect as many independent errors as possible.
///
/// serde stops at the first error, so after each one the entry holding the offending node is set
/// aside (skipped, never mutated) and deserialization runs again. A "missing field" that only exists
/// because its field was set aside is not reported.
pub fn from_node_all<T: DeserializeOwned>(node: &Node) -> Result<T, Vec<Diagnostic>> {
    let mut removed = HashSet::new();
    let mut removed_paths = HashSet::new();
    let mut diags: Vec<Diagnostic> = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let de = De::root(node, &removed);
        let err = match T::deserialize(de) {
            Ok(value) if diags.is_empty() => return Ok(value),
            Ok(_) => break,
            Err(e) => de.locate(e),
        };
        let loc = err.loc.clone().unwrap_or(Loc { path: String::new(), span: node.span, target: addr(node) });
        let consequence = match &err.kind {
            Kind::MissingField(field) => {
                let mut p = loc.path.clone();
                push_key(&mut p, field);
                removed_paths.contains(&p)
            }
            _ => false,
        };
        let diag = err.into_diagnostic();
        if (!consequence || diags.is_empty()) && !diags.contains(&diag) {
            diags.push(diag);
        }
        if loc.target == addr(node) || !removed.insert(loc.target) {
            break;
        }
        removed_paths.insert(loc.path);
    }
    sort_diagnostics(&mut diags);
    Err(diags)
}

fn addr(node: &Node) -> usize {
    std::ptr::from_ref(node).addr()
}

#[derive(Debug, Clone)]
enum Kind {
    Other,
    UnknownField(String),
    MissingField(String),
}

#[derive(Debug, Clone)]
struct Loc {
    path: String,
    span: Span,
    /// The node to set aside when recovering: the map value or sequence element holding the error.
    target: usize,
}

#[derive(Debug)]
pub struct Error {
    message: String,
    kind: Kind,
    loc: Option<Loc>,
}

impl Error {
    fn msg(message: String) -> Self {
        Error { message, kind: Kind::Other, loc: None }
    }

    fn into_diagnostic(self) -> Diagnostic {
        match self.loc {
            Some(loc) => Diagnostic::new(loc.path, self.message).at(Some(loc.span)),
            None => Diagnostic::new("", self.message),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

fn one_of(names: &[&str]) -> String {
    match names {
        [] => "there are none".to_owned(),
        [one] => format!("expected {one:?}"),
        _ => {
            let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
            format!("expected one of {}", quoted.join(", "))
        }
    }
}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::msg(msg.to_string())
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Error {
            message: format!("unknown field {field:?}, {}", one_of(expected)),
            kind: Kind::UnknownField(field.to_owned()),
            loc: None,
        }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Error::msg(format!("unknown variant {variant:?}, {}", one_of(expected)))
    }

    fn missing_field(field: &'static str) -> Self {
        Error { message: format!("missing field {field:?}"), kind: Kind::MissingField(field.to_owned()), loc: None }
    }

    fn duplicate_field(field: &'static str) -> Self {
        Error::msg(format!("duplicate field {field:?}"))
    }
}

/// The YAML path of the node being deserialized, built on the stack and rendered only for errors.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn render(&self) -> String {
        match self {
            Path::Root => String::new(),
            Path::Key(parent, key) => {
                let mut p = parent.render();
                push_key(&mut p, key);
                p
            }
            Path::Index(parent, i) => {
                let mut p = parent.render();
                push_index(&mut p, *i);
                p
            }
        }
    }
}

fn key_text(node: &Node) -> &str {
    node.as_str().unwrap_or_default()
}

fn unexpected(node: &Node) -> Unexpected<'_> {
    match &node.value {
        Value::Scalar(s) => match s.kind {
            ScalarKind::Null => Unexpected::Other("null"),
            ScalarKind::Bool(b) => Unexpected::Bool(b),
            ScalarKind::Int(i) => match (u64::try_from(i), i64::try_from(i)) {
                (Ok(u), _) => Unexpected::Unsigned(u),
                (_, Ok(n)) => Unexpected::Signed(n),
                _ => Unexpected::Other("integer"),
            },
            ScalarKind::Float(f) => Unexpected::Float(f),
            ScalarKind::Str => Unexpected::Str(&s.text),
        },
        Value::Seq(_) => Unexpected::Seq,
        Value::Map(_) => Unexpected::Map,
    }
}

#[derive(Clone, Copy)]
struct De<'a> {
    node: &'a Node,
    path: Path<'a>,
    target: usize,
    removed: &'a HashSet<usize>,
}

impl<'a> De<'a> {
    fn root(node: &'a Node, removed: &'a HashSet<usize>) -> Self {
        De { node, path: Path::Root, target: addr(node), removed }
    }

    fn child<'c>(&'c self, node: &'c Node, path: Path<'c>) -> De<'c> {
        De { node, path, target: addr(node), removed: self.removed }
    }

    /// Attach this node's place to an error that has none yet: the innermost node that saw the
    /// error is the most precise place we know.
    fn locate(&self, mut e: Error) -> Error {
        if e.loc.is_some() {
            return e;
        }
        // Unknown fields found by serde's buffered paths (tagged enums) arrive at the map itself;
        // point at the key when it is there.
        let entry = match &e.kind {
            Kind::UnknownField(name) => self.live_entry(name),
            _ => None,
        };
        if let (Kind::UnknownField(name), Some((k, v))) = (&e.kind, entry) {
            let mut path = self.path.render();
            push_key(&mut path, name);
            e.loc = Some(Loc { path, span: k.span, target: addr(v) });
            return e;
        }
        e.loc = Some(Loc { path: self.path.render(), span: self.node.span, target: self.target });
        e
    }

    fn live_entry(&self, name: &str) -> Option<&'a (Node, Node)> {
        match &self.node.value {
            Value::Map(entries) => {
                entries.iter().find(|(k, v)| key_text(k) == name && !self.removed.contains(&addr(v)))
            }
            _ => None,
        }
    }

    fn invalid_type(&self, exp: &dyn Expected) -> Error {
        de::Error::invalid_type(unexpected(self.node), exp)
    }

    fn integer(&self, exp: &dyn Expected) -> Result<i128, Error> {
        let Value::Scalar(s) = &self.node.value else {
            return Err(self.invalid_type(exp));
        };
        match s.kind {
            ScalarKind::Int(i) => Ok(i),
            ScalarKind::Str => match parse_int(s.text.trim()) {
                Ok(i) => Ok(i),
                Err(IntError::Overflow) => Err(Error::msg(format!("{} is out of range for {exp}", s.text))),
                Err(IntError::Invalid) => Err(self.invalid_type(exp)),
            },
            _ => Err(self.invalid_type(exp)),
        }
    }

    fn float(&self, exp: &dyn Expected) -> Result<f64, Error> {
        let Value::Scalar(s) = &self.node.value else {
            return Err(self.invalid_type(exp));
        };
        match s.kind {
            ScalarKind::Float(f) => Ok(f),
            #[allow(clippy::cast_precision_loss)]
            ScalarKind::Int(i) => Ok(i as f64),
            ScalarKind::Str => {
                let t = s.text.trim();
                #[allow(clippy::cast_precision_loss)]
                let as_int = parse_int(t).ok().map(|i| i as f64);
                parse_float(t).or(as_int).ok_or_else(|| self.invalid_type(exp))
            }
            _ => Err(self.invalid_type(exp)),
        }
    }

    /// The text of a non-null scalar: any scalar may be read as a string.
    fn text(&self, exp: &dyn Expected) -> Result<&'a str, Error> {
        match &self.node.value {
            Value::Scalar(s) if s.kind != ScalarKind::Null => Ok(&s.text),
            _ => Err(self.invalid_type(exp)),
        }
    }

    fn is_null(&self) -> bool {
        matches!(&self.node.value, Value::Scalar(s) if s.kind == ScalarKind::Null)
    }
}

macro_rules! integer_method {
    ($method:ident, $ty:ty, $visit:ident) => {
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let i = self.integer(&visitor)?;
            let n = <$ty>::try_from(i).map_err(|_| {
                Error::msg(format!(
                    "{i} is out of range for {} (allowed: {} to {})",
                    stringify!($ty),
                    <$ty>::MIN,
                    <$ty>::MAX
                ))
            })?;
            visitor.$visit(n)
        }
    };
}

impl<'de> Deserializer<'de> for De<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Scalar(s) => match s.kind {
                ScalarKind::Null => visitor.visit_unit(),
                ScalarKind::Bool(b) => visitor.visit_bool(b),
                ScalarKind::Int(i) => match (u64::try_from(i), i64::try_from(i)) {
                    (Ok(u), _) => visitor.visit_u64(u),
                    (_, Ok(n)) => visitor.visit_i64(n),
                    _ => visitor.visit_i128(i),
                },
                ScalarKind::Float(f) => visitor.visit_f64(f),
                ScalarKind::Str => visitor.visit_str(&s.text),
            },
            Value::Seq(_) => self.deserialize_seq(visitor),
            Value::Map(_) => self.deserialize_map(visitor),
        }
    }

    integer_method!(deserialize_i8, i8, visit_i8);
    integer_method!(deserialize_i16, i16, visit_i16);
    integer_method!(deserialize_i32, i32, visit_i32);
    integer_method!(deserialize_i64, i64, visit_i64);
    integer_method!(deserialize_i128, i128, visit_i128);
    integer_method!(deserialize_u8, u8, visit_u8);
    integer_method!(deserialize_u16, u16, visit_u16);
    integer_method!(deserialize_u32, u32, visit_u32);
    integer_method!(deserialize_u64, u64, visit_u64);
    integer_method!(deserialize_u128, u128, visit_u128);

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        #[allow(clippy::cast_possible_truncation)]
        let f = self.float(&visitor)? as f32;
        visitor.visit_f32(f)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let f = self.float(&visitor)?;
        visitor.visit_f64(f)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let b = match &self.node.value {
            Value::Scalar(s) => match s.kind {
                ScalarKind::Bool(b) => Some(b),
                ScalarKind::Str => parse_bool(s.text.trim()),
                _ => None,
            },
            _ => None,
        };
        match b {
            Some(b) => visitor.visit_bool(b),
            None => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let text = self.text(&visitor)?;
        let mut chars = text.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => visitor.visit_char(c),
            _ => visitor.visit_str(text),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let text = self.text(&visitor)?;
        visitor.visit_str(text)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if let Value::Seq(_) = self.node.value {
            return self.deserialize_seq(visitor);
        }
        let text = self.text(&visitor)?;
        visitor.visit_bytes(text.as_bytes())
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.is_null() { visitor.visit_none() } else { visitor.visit_some(self) }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.is_null() { visitor.visit_unit() } else { Err(self.invalid_type(&visitor)) }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let Value::Seq(items) = &self.node.value else {
            return Err(self.invalid_type(&visitor));
        };
        let mut access = SeqAcc { de: &self, items: items.iter().enumerate(), consumed: 0 };
        let value = visitor.visit_seq(&mut access)?;
        let left = access.items.filter(|(_, n)| !self.removed.contains(&addr(n))).count();
        if left > 0 {
            return Err(Error::msg(format!(
                "too many elements: expected {}, found {}",
                access.consumed,
                access.consumed + left
            )));
        }
        Ok(value)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let Value::Map(entries) = &self.node.value else {
            return Err(self.invalid_type(&visitor));
        };
        visitor.visit_map(MapAcc { de: &self, entries: entries.iter(), value: None })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Scalar(_) if !self.is_null() => {
                visitor.visit_enum(EnumAcc { de: &self, key: self.node, value: None })
            }
            Value::Map(entries) => {
                let live: Vec<_> = entries.iter().filter(|(_, v)| !self.removed.contains(&addr(v))).collect();
                match live.as_slice() {
                    [(k, v)] => visitor.visit_enum(EnumAcc { de: &self, key: k, value: Some(v) }),
                    _ => Err(Error::msg(format!(
                        "expected a map with exactly one key naming the variant ({}), found {} keys",
                        one_of(variants),
                        live.len()
                    ))),
                }
            }
            _ => Err(Error::msg(format!(
                "invalid type: {}, {} (a name, or a map with the name as its only key)",
                unexpected(self.node),
                one_of(variants)
            ))),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

struct SeqAcc<'b, 'a> {
    de: &'b De<'a>,
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
    consumed: usize,
}

impl<'de> SeqAccess<'de> for SeqAcc<'_, '_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        let removed = self.de.removed;
        let Some((i, node)) = self.items.by_ref().find(|(_, n)| !removed.contains(&addr(n))) else {
            return Ok(None);
        };
        self.consumed += 1;
        let de = self.de.child(node, Path::Index(&self.de.path, i));
        seed.deserialize(de).map(Some).map_err(|e| de.locate(e))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAcc<'b, 'a> {
    de: &'b De<'a>,
    entries: std::slice::Iter<'a, (Node, Node)>,
    value: Option<&'a (Node, Node)>,
}

impl<'de> MapAccess<'de> for MapAcc<'_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        let removed = self.de.removed;
        let Some(entry) = self.entries.by_ref().find(|(_, v)| !removed.contains(&addr(v))) else {
            return Ok(None);
        };
        self.value = Some(entry);
        let (k, v) = entry;
        // A bad key sets aside its whole entry, so its target is the value.
        let de = De { target: addr(v), ..self.de.child(k, Path::Key(&self.de.path, key_text(k))) };
        seed.deserialize(de).map(Some).map_err(|e| de.locate(e))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let Some((k, v)) = self.value.take() else {
            return Err(Error::msg("map value requested before its key".to_owned()));
        };
        let de = self.de.child(v, Path::Key(&self.de.path, key_text(k)));
        seed.deserialize(de).map_err(|e| de.locate(e))
    }
}

/// An externally tagged enum: `key` names the variant; `value` is its content when written as a
/// single-key map.
struct EnumAcc<'b, 'a> {
    de: &'b De<'a>,
    key: &'a Node,
    value: Option<&'a Node>,
}

impl<'de, 'b, 'a> EnumAccess<'de> for EnumAcc<'b, 'a> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self), Error> {
        let path = match self.value {
            Some(_) => Path::Key(&self.de.path, key_text(self.key)),
            None => self.de.path,
        };
        // A bad variant name sets aside the whole enum value.
        let de = De { node: self.key, path, target: self.de.target, removed: self.de.removed };
        let variant = seed.deserialize(de).map_err(|e| de.locate(e))?;
        Ok((variant, self))
    }
}

impl EnumAcc<'_, '_> {
    fn content(&self, exp: &dyn Expected) -> Result<De<'_>, Error> {
        match self.value {
            Some(v) => Ok(self.de.child(v, Path::Key(&self.de.path, key_text(self.key)))),
            None => Err(de::Error::invalid_type(Unexpected::UnitVariant, exp)),
        }
    }
}

impl<'de> VariantAccess<'de> for EnumAcc<'_, '_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.content(&"unit variant") {
            Ok(de) if !de.is_null() => Err(de.locate(de.invalid_type(&"unit variant (no value)"))),
            _ => Ok(()),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        let de = self.content(&"a variant with a value")?;
        seed.deserialize(de).map_err(|e| de.locate(e))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        let de = self.content(&"a variant with a list of values")?;
        de.deserialize_seq(visitor).map_err(|e| de.locate(e))
    }

    fn struct_variant<V: Visitor<'de>>(self, _fields: &'static [&'static str], visitor: V) -> Result<V::Value, Error> {
        let de = self.content(&"a variant with fields")?;
        de.deserialize_map(visitor).map_err(|e| de.locate(e))
    }
}
