//! The CustomResourceDefinitions of every kind, generated from the Rust types:
//! [`all`] lists them and [`render_yaml`] prints them as one multi-document YAML
//! stream (what `crdgen` prints and `config/crd/` holds).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;
use schemars::JsonSchema;

use super::machine::Machine;
use super::machine_class::MachineClass;
use super::machine_deployment::MachineDeployment;
use super::machine_set::MachineSet;

/// Every CRD this operator serves, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        MachineClass::crd(),
        Machine::crd(),
        MachineSet::crd(),
        MachineDeployment::crd(),
    ];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                strip_nullable(schema);
            }
        }
    }
    crds
}

/// Removes `nullable: true` from a schema and all its subschemas.
///
/// schemars marks every `Option` field nullable, but our types never send
/// `null` (optional fields are skipped when empty), and the API server prunes
/// a `null` sent for a non-nullable field anyway. Kubernetes 1.20 publishes
/// nullable fields without a type, so `kubectl explain` could not descend into
/// any optional field; without the flag it can.
fn strip_nullable(schema: &mut JSONSchemaProps) {
    schema.nullable = None;
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        strip_nullable(child);
    }
    match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(item)) => strip_nullable(item),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => items.iter_mut().for_each(strip_nullable),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = schema.additional_properties.as_mut() {
        strip_nullable(extra);
    }
}

/// Where the generated CRDs are committed: the copy users apply and the
/// Helm chart's `crds/` (installed by `helm install`).
pub const COMMITTED_CRD_DIRS: [&str; 2] = ["config/crd", "charts/mcm-provider-aws/crds"];

/// File name of a CRD in `config/crd/` (`<group>_<plural>.yaml`, as MCM names them).
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// One CRD as a YAML document (without the `---` separator).
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    serde_yaml::to_string(crd).expect("a CRD always serializes to YAML")
}

/// Every CRD as one multi-document YAML stream, ready for `kubectl apply -f -`.
pub fn render_yaml() -> String {
    all()
        .iter()
        .map(|crd| format!("---\n{}", to_yaml(crd)))
        .collect()
}

/// The OpenAPI v3 schema of `T` as the API server wants it: inlined (no
/// `$ref`), structural, with `nullable` for optional fields. These are the same
/// settings kube's `CustomResource` derive uses, for the one kind (MachineClass)
/// whose CRD is assembled by hand.
pub(crate) fn schema_for<T: JsonSchema>() -> JSONSchemaProps {
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(schemars::transform::AddNullable::default())
        .with_transform(kube::core::schema::StructuralSchemaRewriter)
        .with_transform(kube::core::schema::OptionalEnum)
        .with_transform(kube::core::schema::OptionalIntOrString)
        .into_generator();
    let schema = generator.into_root_schema_for::<T>();
    serde_json::to_value(schema)
        .and_then(serde_json::from_value)
        .expect("schemars output is a valid JSONSchemaProps")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_namespaced_in_one_group_and_version() {
        let crds = all();
        assert_eq!(crds.len(), 4);
        for crd in &crds {
            assert_eq!(crd.spec.group, super::super::GROUP);
            assert_eq!(crd.spec.scope, "Namespaced");
            assert_eq!(crd.spec.versions.len(), 1);
            assert_eq!(crd.spec.versions[0].name, super::super::VERSION);
            assert!(
                crd.spec.versions[0].schema.is_some(),
                "{} has a schema",
                crd.spec.names.kind
            );
        }
    }

    #[test]
    fn rendered_stream_has_one_document_per_crd() {
        let docs: Vec<CustomResourceDefinition> =
            serde_yaml::Deserializer::from_str(&render_yaml())
                .map(|d| serde::Deserialize::deserialize(d).expect("CRD document"))
                .collect();
        let kinds: Vec<_> = docs.iter().map(|c| c.spec.names.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["MachineClass", "Machine", "MachineSet", "MachineDeployment"]
        );
    }

    /// The API server rejects `$ref` and only accepts structural schemas; the
    /// schema of every CRD must be fully inlined.
    #[test]
    fn schemas_have_no_references() {
        for crd in all() {
            let text = serde_json::to_string(&crd).unwrap();
            assert!(
                !text.contains("$ref"),
                "{} schema contains $ref",
                crd.spec.names.kind
            );
            assert!(
                !text.contains("\"definitions\""),
                "{} has definitions",
                crd.spec.names.kind
            );
        }
    }

    /// Nullable fields lose their type in the OpenAPI that Kubernetes 1.20
    /// publishes, which breaks `kubectl explain` below them.
    #[test]
    fn schemas_have_no_nullable_fields() {
        for crd in all() {
            let text = serde_json::to_string(&crd).unwrap();
            assert!(
                !text.contains("\"nullable\""),
                "{} has nullable fields",
                crd.spec.names.kind
            );
        }
    }

    /// `config/crd/` and the chart's `crds/` are the committed output of
    /// `crdgen --dir` (`make crd` writes both): neither may drift from the
    /// types, so Helm installs exactly what `crdgen | kubectl apply` does.
    #[test]
    fn committed_crds_are_up_to_date() {
        for dir in COMMITTED_CRD_DIRS {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
            let fix = format!(
                "{} is stale: run `make crd` and commit the result",
                dir.display()
            );
            let mut expected: Vec<String> = all().iter().map(file_name).collect();
            expected.sort();
            let mut present: Vec<String> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{fix} ({e})"))
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".yaml"))
                .collect();
            present.sort();
            assert_eq!(present, expected, "{fix}");
            for crd in all() {
                let on_disk = std::fs::read_to_string(dir.join(file_name(&crd))).unwrap();
                assert!(
                    on_disk == to_yaml(&crd),
                    "{fix} ({} differs)",
                    file_name(&crd)
                );
            }
        }
    }
}
