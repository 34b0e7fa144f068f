//! `MachineClass`: the template of EC2 instances that Machines reference.
//!
//! MCM keeps a class's fields at the top level of the object (`providerSpec`,
//! `secretRef`, ... next to `metadata`), with no `spec` wrapper. kube's
//! `CustomResource` derive always nests under `spec`, so this kind implements
//! [`Resource`] and [`CustomResourceExt`] by hand; its CRD schema is still
//! generated from these Rust types.

use std::borrow::Cow;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::SecretReference;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceValidation,
    JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{ApiResource, TypeMeta};
use kube::{CustomResourceExt, Resource};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::crd::schema_for;
use super::provider_spec::AWSProviderSpec;
use super::shared::NodeTemplate;
use super::{API_VERSION, GROUP, VERSION};

const KIND: &str = "MachineClass";
const PLURAL: &str = "machineclasses";
const SHORT_NAMES: &[&str] = &["mcc"];
const CRD_NAME: &str = "machineclasses.machine.sapcloud.io";

/// The only provider this operator serves.
pub const PROVIDER_AWS: &str = "AWS";

/// A MachineClass describes the EC2 instances that Machines referencing it get:
/// the AWS provider spec (AMI, instance type, networking, disks, ...), the
/// Secret(s) holding cloud credentials and user data, and an optional node
/// template. Editing a class affects the Machines that use it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineClass {
    /// `apiVersion` and `kind`.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub types: Option<TypeMeta>,

    /// Standard object metadata.
    #[serde(default)]
    #[schemars(skip)]
    pub metadata: ObjectMeta,

    /// Name of the cloud provider. This operator serves classes with provider
    /// `AWS`; when empty, `AWS` is assumed (MCM's samples omit it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^AWS$"))]
    pub provider: Option<String>,

    /// The AWS-specific description of the instances: AMI, instance type,
    /// region, networking, block devices, IAM profile, tags, and more.
    pub provider_spec: AWSProviderSpec,

    /// Reference to a Secret with the user data (`userData`) and, unless
    /// `credentialsSecretRef` is set, the AWS credentials. The Secret gets the
    /// finalizer `machine.sapcloud.io/machine-controller` while the class is in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,

    /// Reference to a Secret with only AWS credentials
    /// (`providerAccessKeyId`/`providerSecretAccessKey`, or
    /// `workloadIdentityTokenFile` and `roleARN`). Its keys win over the same
    /// keys in `secretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretReference>,

    /// Resources and topology of the nodes this class produces, for
    /// consumers such as the cluster autoscaler when scaling from zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_template: Option<NodeTemplate>,
}

impl MachineClass {
    /// A class named `name` (with `apiVersion` and `kind` set) for the given
    /// provider spec.
    pub fn new(name: &str, provider_spec: AWSProviderSpec) -> Self {
        Self {
            types: Some(TypeMeta {
                api_version: API_VERSION.into(),
                kind: KIND.into(),
            }),
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            provider: Some(PROVIDER_AWS.into()),
            provider_spec,
            ..Self::default()
        }
    }

    /// Whether this operator serves the class (provider `AWS` or unset).
    pub fn is_aws(&self) -> bool {
        self.provider.as_deref().is_none_or(|p| p == PROVIDER_AWS)
    }
}

impl Resource for MachineClass {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        API_VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The object-level schema: the derived schema of the top-level fields plus
/// `apiVersion`, `kind` and `metadata`, as the derive builds it for other kinds.
fn object_schema() -> JSONSchemaProps {
    let mut schema = schema_for::<MachineClass>();
    let props = schema.properties.get_or_insert_with(Default::default);
    let string = |description: &str| JSONSchemaProps {
        type_: Some("string".into()),
        description: Some(description.into()),
        ..JSONSchemaProps::default()
    };
    props.insert(
        "apiVersion".into(),
        string("APIVersion defines the versioned schema of this representation of an object."),
    );
    props.insert(
        "kind".into(),
        string("Kind is a string value representing the REST resource this object represents."),
    );
    props.insert(
        "metadata".into(),
        JSONSchemaProps {
            type_: Some("object".into()),
            ..JSONSchemaProps::default()
        },
    );
    schema
}

fn column(
    name: &str,
    type_: &str,
    path: &str,
    description: &str,
) -> CustomResourceColumnDefinition {
    CustomResourceColumnDefinition {
        name: name.into(),
        type_: type_.into(),
        json_path: path.into(),
        description: Some(description.into()),
        ..CustomResourceColumnDefinition::default()
    }
}

impl CustomResourceExt for MachineClass {
    fn crd() -> CustomResourceDefinition {
        CustomResourceDefinition {
            metadata: ObjectMeta {
                name: Some(CRD_NAME.into()),
                ..ObjectMeta::default()
            },
            spec: CustomResourceDefinitionSpec {
                group: GROUP.into(),
                scope: "Namespaced".into(),
                names: CustomResourceDefinitionNames {
                    kind: KIND.into(),
                    list_kind: Some(format!("{KIND}List")),
                    plural: PLURAL.into(),
                    singular: Some(KIND.to_lowercase()),
                    short_names: Some(SHORT_NAMES.iter().map(|s| s.to_string()).collect()),
                    categories: Some(vec!["machine-controller-manager".into()]),
                },
                versions: vec![CustomResourceDefinitionVersion {
                    name: VERSION.into(),
                    served: true,
                    storage: true,
                    schema: Some(CustomResourceValidation {
                        open_api_v3_schema: Some(object_schema()),
                    }),
                    additional_printer_columns: Some(vec![
                        column(
                            "Machine Type",
                            "string",
                            ".providerSpec.machineType",
                            "EC2 instance type",
                        ),
                        column("Region", "string", ".providerSpec.region", "AWS region"),
                        column(
                            "Age",
                            "date",
                            ".metadata.creationTimestamp",
                            "Time since creation",
                        ),
                    ]),
                    ..CustomResourceDefinitionVersion::default()
                }],
                ..CustomResourceDefinitionSpec::default()
            },
            status: None,
        }
    }

    fn crd_name() -> &'static str {
        CRD_NAME
    }

    fn api_resource() -> ApiResource {
        ApiResource::erase::<Self>(&())
    }

    fn shortnames() -> &'static [&'static str] {
        SHORT_NAMES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_keeps_fields_at_the_top_level() {
        let crd = MachineClass::crd();
        let schema = crd.spec.versions[0]
            .schema
            .clone()
            .unwrap()
            .open_api_v3_schema
            .unwrap();
        let props = schema.properties.unwrap();
        for key in [
            "apiVersion",
            "kind",
            "metadata",
            "provider",
            "providerSpec",
            "secretRef",
            "credentialsSecretRef",
            "nodeTemplate",
        ] {
            assert!(props.contains_key(key), "missing top-level property {key}");
        }
        assert!(
            !props.contains_key("spec"),
            "MCM classes have no spec wrapper"
        );
        assert!(!props.contains_key("types"));
        assert_eq!(schema.required, Some(vec!["providerSpec".to_string()]));
        assert_eq!(crd.spec.names.short_names, Some(vec!["mcc".to_string()]));
        assert_eq!(MachineClass::crd_name(), crd.metadata.name.unwrap());
    }

    #[test]
    fn serializes_with_type_meta_and_without_spec_wrapper() {
        let class = MachineClass::new("c1", AWSProviderSpec::default());
        let value = serde_json::to_value(&class).unwrap();
        assert_eq!(value["apiVersion"], API_VERSION);
        assert_eq!(value["kind"], KIND);
        assert_eq!(value["metadata"]["name"], "c1");
        assert!(value.get("providerSpec").is_some());
        assert!(value.get("spec").is_none());
        let back: MachineClass = serde_json::from_value(value).unwrap();
        assert_eq!(back, class);
    }

    #[test]
    fn provider_defaults_to_aws() {
        let mut class = MachineClass::new("c1", AWSProviderSpec::default());
        assert!(class.is_aws());
        class.provider = None;
        assert!(class.is_aws());
        class.provider = Some("Azure".into());
        assert!(!class.is_aws());
    }
}
