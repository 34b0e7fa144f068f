//! Builders that make a test scenario one line: `machine("m1").of_class("c")`.

use kube::api::ObjectMeta;
use mcm_provider_aws::api::machine::{Machine, MachineSpec};
use mcm_provider_aws::api::shared::ClassSpec;

/// A Machine named `name` in `namespace` that references MachineClass `class`.
pub fn machine(namespace: &str, name: &str, class: &str) -> Machine {
    let mut m = Machine::new(
        name,
        MachineSpec {
            class: ClassSpec {
                kind: "MachineClass".into(),
                name: class.into(),
                ..ClassSpec::default()
            }
            .into(),
            ..MachineSpec::default()
        },
    );
    m.metadata = ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        ..ObjectMeta::default()
    };
    m
}
