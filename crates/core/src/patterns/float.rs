//! Floating-point fields of the drain forecast that may be infinite (a hazard rate when every
//! flow observed ended), in JSON: a number when finite, else `null`, which the API documents as
//! infinite. serde_json writes a non-finite float as `null` but refuses `null` when it reads a
//! float back, so a whole router report with one was unreadable on etcd; here `null` reads back
//! as infinite.

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;

/// Writes `x`: a number, or `null` when it is not finite.
#[allow(clippy::trivially_copy_pass_by_ref, reason = "serde's `with` passes fields by reference")]
pub fn serialize<S: Serializer>(x: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if x.is_finite() { serializer.serialize_f64(*x) } else { serializer.serialize_none() }
}

/// Reads a number, or `null` as infinite.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    deserializer.deserialize_any(FloatVisitor)
}

struct FloatVisitor;

impl Visitor<'_> for FloatVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("a number, or null (infinite)")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_unit<E: de::Error>(self) -> Result<f64, E> {
        Ok(f64::INFINITY)
    }

    fn visit_none<E: de::Error>(self) -> Result<f64, E> {
        Ok(f64::INFINITY)
    }
}
