//! Schemas of the OpenAPI document (`http/openapi.rs`) that types across the crate use in their
//! `#[schema(schema_with = …)]`: a leaf below every layer, so a store or config type can say its
//! JSON shape without depending on the HTTP layer.

use switchboard_providers::receipt::DeliveryStatus;
use switchboard_providers::ErrorClass;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, SchemaType, Type};

/// A nullable string schema (`["string", "null"]`).
pub fn nullable_string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(SchemaType::from_iter([Type::String, Type::Null]))
}

/// A string with one of `values`.
pub fn string_enum<const N: usize>(values: [&str; N]) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(values))
}

/// A time as the API writes it (RFC 3339, UTC, milliseconds).
pub fn date_time() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
}

/// Any JSON value.
pub fn any_value() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(SchemaType::AnyValue)
}

/// A message's `delivery_status`: `null` until the first receipt.
pub fn delivery_status() -> ObjectBuilder {
    let names = DeliveryStatus::ALL.map(|s| Some(s.as_str()));
    nullable_string().enum_values(Some(names.into_iter().chain([None])))
}

/// An attempt's `error_class`: `null` for a success.
pub fn error_class() -> ObjectBuilder {
    // Every class, by its serialized name (the match fails to build when one is added).
    let all = |class: ErrorClass| match class {
        ErrorClass::NotSent | ErrorClass::Ambiguous | ErrorClass::Rejected | ErrorClass::Misconfigured => {
            class
        }
    };
    let names = [ErrorClass::NotSent, ErrorClass::Ambiguous, ErrorClass::Rejected, ErrorClass::Misconfigured]
        .map(|class| serde_json::to_value(all(class)).unwrap_or_default());
    nullable_string().enum_values(Some(names.into_iter().chain([serde_json::Value::Null])))
}
