//! An optional `metav1.Time` in 8 bytes instead of 24, for times the caches
//! hold by the thousand (a Machine's conditions, a Node's).
//!
//! A [`Stamp`] is whole seconds since the epoch, `i64::MIN` for none.
//! `metav1.Time` travels with second precision, so nothing read from the
//! API server is lost; a sub-second part (which only a time taken in memory
//! has) is dropped. On the wire and in the schema it is exactly an optional
//! `Time`: an RFC 3339 string, absent for none (use it with
//! `#[serde(default, skip_serializing_if = "Stamp::is_none")]`).

use std::borrow::Cow;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// See the module docs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Stamp(i64);

impl Stamp {
    /// No time.
    pub const NONE: Stamp = Stamp(i64::MIN);

    pub fn of(t: &Option<Time>) -> Self {
        t.as_ref().map_or(Self::NONE, Self::at)
    }

    pub fn at(t: &Time) -> Self {
        Stamp(t.0.as_second())
    }

    pub fn now() -> Self {
        Stamp(Timestamp::now().as_second())
    }

    pub fn is_none(&self) -> bool {
        *self == Self::NONE
    }

    pub fn is_some(&self) -> bool {
        !self.is_none()
    }

    pub fn time(self) -> Option<Time> {
        self.timestamp().map(Time)
    }

    pub fn timestamp(self) -> Option<Timestamp> {
        if self.is_none() {
            return None;
        }
        Timestamp::from_second(self.0).ok()
    }
}

impl From<Timestamp> for Stamp {
    fn from(t: Timestamp) -> Self {
        Stamp(t.as_second())
    }
}

impl From<Option<Timestamp>> for Stamp {
    fn from(t: Option<Timestamp>) -> Self {
        t.map_or(Self::NONE, Self::from)
    }
}

impl Default for Stamp {
    fn default() -> Self {
        Self::NONE
    }
}

impl From<Option<Time>> for Stamp {
    fn from(t: Option<Time>) -> Self {
        Self::of(&t)
    }
}

impl fmt::Debug for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.time(), f)
    }
}

impl Serialize for Stamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.time().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Stamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Option::<Time>::deserialize(d).map(Self::from)
    }
}

impl JsonSchema for Stamp {
    fn inline_schema() -> bool {
        <Option<Time>>::inline_schema()
    }

    fn schema_name() -> Cow<'static, str> {
        <Option<Time>>::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        <Option<Time>>::schema_id()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        <Option<Time>>::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn time(s: &str) -> Time {
        serde_json::from_value(json!(s)).unwrap()
    }

    #[test]
    fn a_stamp_keeps_a_time_to_the_second_and_none_as_none() {
        let t = time("2026-12-01T09:00:00Z");
        assert_eq!(Stamp::of(&Some(t.clone())).time(), Some(t));
        assert_eq!(Stamp::of(&None).time(), None);
        let epoch = time("1970-01-01T00:00:00Z");
        assert_eq!(Stamp::at(&epoch).time(), Some(epoch));
        assert_eq!(
            Stamp::at(&time("2026-12-01T09:00:00.75Z")).time(),
            Some(time("2026-12-01T09:00:00Z"))
        );
        assert_eq!(std::mem::size_of::<Stamp>(), 8);
    }

    #[test]
    fn on_the_wire_it_is_an_optional_time() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Holder {
            #[serde(default, skip_serializing_if = "Stamp::is_none")]
            at: Stamp,
        }
        let some: Holder = serde_json::from_value(json!({"at": "2026-12-01T09:00:00Z"})).unwrap();
        assert_eq!(
            serde_json::to_value(&some).unwrap(),
            json!({"at": "2026-12-01T09:00:00Z"})
        );
        let none: Holder = serde_json::from_value(json!({})).unwrap();
        assert!(none.at.is_none());
        assert_eq!(serde_json::to_value(&none).unwrap(), json!({}));
        let null: Holder = serde_json::from_value(json!({"at": null})).unwrap();
        assert!(null.at.is_none());
        assert!(serde_json::from_value::<Holder>(json!({"at": "yesterday"})).is_err());
        assert_eq!(
            format!("{:?}", some.at),
            format!("{:?}", Some(time("2026-12-01T09:00:00Z")))
        );
    }
}
