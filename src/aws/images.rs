//! The AMI root device name, looked up once per (region, AMI).
//!
//! A launch needs the AMI's root device name (`/dev/xvda`, `/dev/sda1`, ...)
//! to rename the spec's `/root` block device (see [`crate::aws::launch`]).
//! MCM asks DescribeImages on every CreateMachine; an image's root device
//! name never changes, so this cache asks once per (region, AMI) for the
//! life of the process, and concurrent launches of the same class share one
//! in-flight call. That is part of the EC2 budget of DESIGN §3.
//!
//! Only answers are cached, never failures: an AMI that is not found (yet,
//! e.g. before it is shared with the account) is asked for again on the next
//! launch. The cache does not distinguish credentials: an image's root device
//! name is the same for every account that can see it, and an account that
//! cannot see it gets `InvalidAMIID.NotFound` from RunInstances instead.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use aws_sdk_ec2::operation::describe_images::DescribeImagesOutput;
use tokio::sync::OnceCell;

use crate::aws::clients::Ec2Handle;
use crate::aws::errors::{Ec2Error, ErrorClass};

/// The EC2 action, for errors and metrics.
const OPERATION: &str = "DescribeImages";
/// EC2's code for an unknown image; the error we return for an image that
/// DescribeImages does not list carries it too, so callers classify both
/// cases alike (invalid input: fix the class).
pub const AMI_NOT_FOUND_CODE: &str = "InvalidAMIID.NotFound";

/// One cached lookup: empty until a lookup succeeds; callers that arrive while
/// one runs wait for it instead of starting their own.
type Slot = Arc<OnceCell<Option<String>>>;

/// Cache of AMI root device names per (region, AMI). Cheap to clone; clones
/// share the cache, so one instance lives in the controller context.
#[derive(Clone, Debug, Default)]
pub struct ImageCache {
    slots: Arc<Mutex<HashMap<(String, String), Slot>>>,
}

impl ImageCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The root device name of `ami` in `region` (`None` when the image has
    /// none, which EC2 allows for some instance-store images), asking
    /// DescribeImages through `handle` (so the call counts against the
    /// client-side rate limit) only when not cached.
    ///
    /// Errors: the AMI does not exist or is not visible → [`ErrorClass::InvalidInput`]
    /// with code [`AMI_NOT_FOUND_CODE`] (or EC2's `InvalidAMIID.Malformed`);
    /// other failures as classified by [`Ec2Error::from_sdk`].
    pub async fn root_device_name(
        &self,
        handle: &Ec2Handle,
        region: &str,
        ami: &str,
    ) -> Result<Option<String>, Ec2Error> {
        self.root_device_name_with(region, ami, || async move {
            let request = handle.client.describe_images().image_ids(ami).send();
            let output = handle.call(OPERATION, request).await?;
            root_device_from_output(region, ami, &output)
        })
        .await
    }

    /// Like [`ImageCache::root_device_name`], with the DescribeImages call
    /// supplied by the caller (e.g. a plain SDK client in tools, with
    /// [`root_device_from_output`] to read the answer). `lookup` runs
    /// only when `(region, ami)` is not cached and no other lookup for it is
    /// in flight; its error is returned and not cached.
    pub async fn root_device_name_with<F, Fut>(
        &self,
        region: &str,
        ami: &str,
        lookup: F,
    ) -> Result<Option<String>, Ec2Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<String>, Ec2Error>>,
    {
        if ami.is_empty() {
            return Err(Ec2Error::new(
                OPERATION,
                ErrorClass::InvalidInput,
                Some("InvalidAMIID.Malformed".to_owned()),
                "providerSpec.ami is empty",
            ));
        }
        let key = (region.to_owned(), ami.to_owned());
        let slot = self.lock().entry(key.clone()).or_default().clone();
        match slot.get_or_try_init(lookup).await {
            Ok(root) => Ok(root.clone()),
            Err(err) => {
                self.drop_if_empty(&key, &slot);
                Err(err)
            }
        }
    }

    /// The cached answer for `(region, ami)`, if any: `Some(None)` is a cached
    /// image without a root device name.
    pub fn cached(&self, region: &str, ami: &str) -> Option<Option<String>> {
        self.lock()
            .get(&(region.to_owned(), ami.to_owned()))
            .and_then(|slot| slot.get().cloned())
    }

    /// Forgets `(region, ami)`, e.g. after RunInstances reported the image
    /// gone (deregistered), so the next launch asks EC2 again.
    pub fn forget(&self, region: &str, ami: &str) {
        self.lock().remove(&(region.to_owned(), ami.to_owned()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Slot>> {
        // The map is only ever left consistent (single insert/remove), so a
        // panic elsewhere while holding the lock does not corrupt it.
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Removes a slot whose lookups all failed, so that unknown AMIs do not
    /// pile up; a slot that another caller has filled (or replaced) stays.
    fn drop_if_empty(&self, key: &(String, String), slot: &Slot) {
        let mut slots = self.lock();
        if let Some(current) = slots.get(key)
            && Arc::ptr_eq(current, slot)
            && !current.initialized()
        {
            slots.remove(key);
        }
    }
}

/// Reads the root device name of `ami` from a DescribeImages answer. An answer
/// without the image is the not-found error MCM reports ("Image ... not
/// found"), classified as invalid input with code [`AMI_NOT_FOUND_CODE`].
pub fn root_device_from_output(
    region: &str,
    ami: &str,
    output: &DescribeImagesOutput,
) -> Result<Option<String>, Ec2Error> {
    let images = output.images();
    let image = images
        .iter()
        .find(|image| image.image_id() == Some(ami))
        .or_else(|| images.first())
        .ok_or_else(|| {
            Ec2Error::new(
                OPERATION,
                ErrorClass::InvalidInput,
                Some(AMI_NOT_FOUND_CODE.to_owned()),
                format!("image {ami} not found in region {region} (providerSpec.ami)"),
            )
        })?;
    Ok(image
        .root_device_name()
        .filter(|name| !name.is_empty())
        .map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use aws_sdk_ec2::types::Image;

    use super::*;

    fn output(images: Vec<Image>) -> DescribeImagesOutput {
        DescribeImagesOutput::builder()
            .set_images(Some(images))
            .build()
    }

    fn image(id: &str, root: Option<&str>) -> Image {
        Image::builder()
            .image_id(id)
            .set_root_device_name(root.map(str::to_owned))
            .build()
    }

    #[test]
    fn root_device_name_comes_from_the_matching_image() {
        let out = output(vec![
            image("ami-other", Some("/dev/sda1")),
            image("ami-1", Some("/dev/xvda")),
        ]);
        let root = root_device_from_output("eu-west-1", "ami-1", &out).expect("found");
        assert_eq!(root.as_deref(), Some("/dev/xvda"));

        let out = output(vec![image("ami-1", None)]);
        assert_eq!(
            root_device_from_output("eu-west-1", "ami-1", &out).expect("found"),
            None
        );
    }

    #[test]
    fn missing_image_is_invalid_input_with_ec2s_code() {
        let err = root_device_from_output("eu-west-1", "ami-gone", &output(vec![]))
            .expect_err("not found");
        assert_eq!(err.class, ErrorClass::InvalidInput);
        assert_eq!(err.code.as_deref(), Some(AMI_NOT_FOUND_CODE));
        assert!(err.to_string().contains("ami-gone"), "{err}");
    }

    #[tokio::test]
    async fn looks_up_once_per_region_and_ami() {
        let cache = ImageCache::new();
        let counter = AtomicUsize::new(0);
        let calls = &counter;
        let lookup = || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(Some("/dev/xvda".to_owned()))
        };
        for _ in 0..3 {
            let root = cache
                .root_device_name_with("eu-west-1", "ami-1", lookup)
                .await
                .expect("lookup");
            assert_eq!(root.as_deref(), Some("/dev/xvda"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // Another region (or AMI) is another image.
        cache
            .root_device_name_with("us-east-1", "ami-1", lookup)
            .await
            .expect("lookup");
        cache
            .root_device_name_with("eu-west-1", "ami-2", lookup)
            .await
            .expect("lookup");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(
            cache.cached("eu-west-1", "ami-1"),
            Some(Some("/dev/xvda".to_owned()))
        );

        cache.forget("eu-west-1", "ami-1");
        assert_eq!(cache.cached("eu-west-1", "ami-1"), None);
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_lookup() {
        let cache = ImageCache::new();
        let counter = AtomicUsize::new(0);
        let calls = &counter;
        let (release, receiver) = tokio::sync::watch::channel(false);
        let released = &receiver;
        let lookup = || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let mut released = released.clone();
            // Hold the lookup open until every caller is waiting on it.
            let _ = released.wait_for(|r| *r).await;
            Ok(Some("/dev/sda1".to_owned()))
        };
        let callers = futures::future::join_all(
            (0..4).map(|_| cache.root_device_name_with("eu-west-1", "ami-1", lookup)),
        );
        let opener = async {
            tokio::task::yield_now().await;
            let _ = release.send(true);
        };
        let (results, ()) = tokio::join!(callers, opener);
        for result in results {
            assert_eq!(result.expect("lookup").as_deref(), Some("/dev/sda1"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn failures_are_not_cached() {
        let cache = ImageCache::new();
        let err = cache
            .root_device_name_with("eu-west-1", "ami-1", || async {
                Err(Ec2Error::new(
                    OPERATION,
                    ErrorClass::Transient,
                    None,
                    "connection reset",
                ))
            })
            .await
            .expect_err("fails");
        assert_eq!(err.class, ErrorClass::Transient);
        assert_eq!(cache.cached("eu-west-1", "ami-1"), None);
        assert!(cache.lock().is_empty(), "no empty slot left behind");

        let root = cache
            .root_device_name_with("eu-west-1", "ami-1", || async {
                Ok(Some("/dev/xvda".to_owned()))
            })
            .await
            .expect("second try");
        assert_eq!(root.as_deref(), Some("/dev/xvda"));
    }

    #[tokio::test]
    async fn empty_ami_is_invalid_input_without_a_call() {
        let cache = ImageCache::new();
        let counter = AtomicUsize::new(0);
        let calls = &counter;
        let err = cache
            .root_device_name_with("eu-west-1", "", || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(None)
            })
            .await
            .expect_err("empty");
        assert_eq!(err.class, ErrorClass::InvalidInput);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }
}
