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
/// schemars marks every `Option` field nullable; we drop the flag because it
/// gains nothing and costs something. Nothing is lost: a `null` sent for a
/// field that is not nullable is still accepted, the API server drops it
/// before validating and storing the object (so MCM's Go clients, which send
/// unset pointers as `null`, are served, and the stored object looks as our
/// types write it: optional fields absent, never `null`). The cost avoided:
/// the OpenAPI v2 document that API servers still publish (1.37 included, for
/// clients that read v2) turns every nullable field into an untyped value
/// without properties or items, hiding everything inside an optional object
/// (`cpuOptions`, `placement`, ...) from v2 readers. OpenAPI v3, which
/// current `kubectl explain` reads, is complete either way.
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
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule;

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

    /// Every CEL rule (`x-kubernetes-validations`) in a CRD with the path of
    /// the schema node that carries it (`providerSpec.blockDevices[*].ebs`).
    fn cel_rules() -> Vec<(String, ValidationRule, JSONSchemaProps)> {
        fn walk(
            path: String,
            schema: &JSONSchemaProps,
            out: &mut Vec<(String, ValidationRule, JSONSchemaProps)>,
        ) {
            for rule in schema.x_kubernetes_validations.iter().flatten() {
                out.push((path.clone(), rule.clone(), schema.clone()));
            }
            for (name, child) in schema.properties.iter().flatten() {
                let child_path = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                walk(child_path, child, out);
            }
            if let Some(JSONSchemaPropsOrArray::Schema(item)) = &schema.items {
                walk(format!("{path}[*]"), item, out);
            }
            if let Some(JSONSchemaPropsOrBool::Schema(values)) = &schema.additional_properties {
                walk(format!("{path}[*]"), values, out);
            }
        }
        let mut out = Vec::new();
        for crd in all() {
            for version in &crd.spec.versions {
                if let Some(schema) = version
                    .schema
                    .as_ref()
                    .and_then(|s| s.open_api_v3_schema.as_ref())
                {
                    walk(String::new(), schema, &mut out);
                }
            }
        }
        out
    }

    /// The `# expect-error:` lines of `config/samples/invalid/`.
    fn expected_sample_errors() -> Vec<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples/invalid");
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .filter_map(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("# expect-error:"))
                    .map(|e| e.trim().to_owned())
            })
            .collect()
    }

    /// `kubectl apply` prints a rule's message after the path of the node
    /// that carries the rule; the message starts with the field it is about
    /// (that node, or a field below it), so users see the field even where
    /// the node is a whole list. Each rule is proven on a real API server by
    /// one sample in `config/samples/invalid/` that expects its message.
    #[test]
    fn cel_rules_name_their_field_and_each_has_an_invalid_sample() {
        let rules = cel_rules();
        assert!(rules.len() >= 9, "the provider spec's rules are missing");
        let expected = expected_sample_errors();
        for (path, rule, _) in &rules {
            let message = rule
                .message
                .as_deref()
                .unwrap_or_else(|| panic!("rule at {path} has no message: {}", rule.rule));
            let named = message
                .split_once(": ")
                .map(|(field, _)| field)
                .unwrap_or_else(|| panic!("{message:?} does not start with `<field>: `"));
            let target = format!("{path}{}", rule.field_path.as_deref().unwrap_or(""));
            assert!(
                named == target
                    || named.starts_with(&format!("{target}."))
                    || named.starts_with(&format!("{target}[*]")),
                "rule at {target} names {named}"
            );
            // The server prints a duplicate without the rule's message.
            assert_ne!(
                rule.reason.as_deref(),
                Some("FieldValueDuplicate"),
                "rule at {target} would lose its message"
            );
            assert!(
                expected.iter().any(|e| e == message),
                "no sample in config/samples/invalid expects {message:?}"
            );
        }
    }

    /// The API server estimates each rule's worst-case cost from the bounds of
    /// what it iterates and refuses a CRD over budget; a rule over a list
    /// without `maxItems` is estimated with the request size limit.
    #[test]
    fn cel_rules_over_lists_have_bounded_lists() {
        for (path, rule, schema) in cel_rules() {
            if schema.type_.as_deref() == Some("array") {
                assert!(
                    schema.max_items.is_some(),
                    "{path} has rule {} but no maxItems",
                    rule.rule
                );
            }
        }
    }

    /// See [`strip_nullable`]: a `null` for an optional field is dropped by
    /// the API server anyway, and nullable fields lose their type and fields
    /// in the OpenAPI v2 document servers publish. The integration tests
    /// `class_with_nulls_as_the_go_client_sends_them_is_stored_without_them`
    /// and `openapi_v2_keeps_the_fields_of_optional_objects` check both on a
    /// real server.
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
