//! Captured params of a route match: byte ranges into the request path, kept inline so that a
//! lookup allocates nothing for patterns with up to eight params.
//!
//! Produced by `RouteTable::find` once the winning entry is known; read by the proxy (for
//! logging and headers) and by `rewrite.rs` when building the upstream path.

use std::sync::Arc;

use super::RouteId;

/// Patterns with more params than this spill the rest into a `Vec`; real APIs rarely exceed it.
const INLINE: usize = 8;
/// Marks a slot with no value: a regex group that did not participate.
const UNSET: (u32, u32) = (u32::MAX, u32::MAX);

/// Param ranges indexed by the position of the name in the pattern, plus the tail remainder.
/// Offsets are `u32` to keep a match small; `find` refuses paths that would not fit.
#[derive(Debug, Clone)]
pub(crate) struct Captures {
    len: usize,
    inline: [(u32, u32); INLINE],
    spill: Vec<(u32, u32)>,
    tail: Option<(u32, u32)>,
}

impl Default for Captures {
    fn default() -> Self {
        Captures { len: 0, inline: [UNSET; INLINE], spill: Vec::new(), tail: None }
    }
}

fn to_range(start: usize, end: usize) -> (u32, u32) {
    match (u32::try_from(start), u32::try_from(end)) {
        (Ok(s), Ok(e)) if s != u32::MAX => (s, e),
        _ => UNSET,
    }
}

impl Captures {
    pub(crate) fn reset(&mut self, len: usize) {
        self.len = len;
        self.inline = [UNSET; INLINE];
        self.spill.clear();
        if len > INLINE {
            self.spill.resize(len - INLINE, UNSET);
        }
        self.tail = None;
    }

    pub(crate) fn set(&mut self, slot: usize, start: usize, end: usize) {
        let range = to_range(start, end);
        if slot < INLINE {
            self.inline[slot] = range;
        } else if let Some(s) = self.spill.get_mut(slot - INLINE) {
            *s = range;
        }
    }

    pub(crate) fn get(&self, slot: usize) -> Option<(usize, usize)> {
        if slot >= self.len {
            return None;
        }
        let range = if slot < INLINE { self.inline[slot] } else { *self.spill.get(slot - INLINE)? };
        (range != UNSET).then_some((range.0 as usize, range.1 as usize))
    }

    pub(crate) fn set_tail(&mut self, start: usize, end: usize) {
        let range = to_range(start, end);
        self.tail = (range != UNSET).then_some(range);
    }

    pub(crate) fn tail(&self) -> Option<(usize, usize)> {
        self.tail.map(|(s, e)| (s as usize, e as usize))
    }
}

/// The params of one match. Names are shared with the pattern, and only attached when the pattern
/// has any, so a plain match touches no reference count.
#[derive(Debug, Clone, Default)]
pub(crate) struct Params {
    pub(crate) names: Option<Arc<[Box<str>]>>,
    pub(crate) caps: Captures,
}

/// The winning entry of a lookup.
///
/// Param values are ranges into the request path, so every accessor takes that same path back;
/// given any other string they return `None` rather than panic.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub route: RouteId,
    /// Index into the route's `paths`.
    pub pattern: u16,
    pub(crate) params: Params,
}

impl RouteMatch {
    /// The value of the param or catch-all `name` (a named group for regex patterns).
    pub fn param<'p>(&self, path: &'p str, name: &str) -> Option<&'p str> {
        let names = self.params.names.as_deref()?;
        let slot = names.iter().position(|n| &**n == name)?;
        let (start, end) = self.params.caps.get(slot)?;
        path.get(start..end)
    }

    /// Every param with a value, in pattern order.
    pub fn params<'p>(&self, path: &'p str) -> impl Iterator<Item = (&str, &'p str)> {
        let names = self.params.names.as_deref().unwrap_or_default();
        names.iter().enumerate().filter_map(move |(slot, name)| {
            let (start, end) = self.params.caps.get(slot)?;
            Some((&**name, path.get(start..end)?))
        })
    }

    /// The remainder matched by a `**` or `{*name}` tail, without its leading `/`; `None` when the
    /// pattern has no tail.
    pub fn tail<'p>(&self, path: &'p str) -> Option<&'p str> {
        let (start, end) = self.params.caps.tail()?;
        path.get(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_and_spilled_slots() {
        let mut caps = Captures::default();
        caps.reset(10);
        for slot in 0..10 {
            caps.set(slot, slot, slot + 1);
        }
        for slot in 0..10 {
            assert_eq!(caps.get(slot), Some((slot, slot + 1)));
        }
        assert_eq!(caps.get(10), None);
        caps.reset(2);
        assert_eq!(caps.get(0), None);
        assert_eq!(caps.get(9), None);
        assert_eq!(caps.tail(), None);
    }

    #[test]
    fn accessors_tolerate_a_foreign_path() {
        let mut params = Params { names: Some(vec!["id".into()].into()), ..Params::default() };
        params.caps.reset(1);
        params.caps.set(0, 7, 9);
        params.caps.set_tail(7, 9);
        let m = RouteMatch { route: 0, pattern: 0, params };
        assert_eq!(m.param("/users/42", "id"), Some("42"));
        assert_eq!(m.param("/users/42", "other"), None);
        assert_eq!(m.param("/u", "id"), None);
        assert_eq!(m.params("/users/42").collect::<Vec<_>>(), [("id", "42")]);
        assert_eq!(m.tail("/users/42"), Some("42"));
    }
}
