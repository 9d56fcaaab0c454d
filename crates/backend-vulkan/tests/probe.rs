//! Integration test: `probe()`/`describe()` list Vulkan devices or report why Vulkan is unavailable, without panicking.

use backend_vulkan::{describe, probe, VulkanError};

#[test]
fn probe_lists_devices_or_reports_unavailable() {
    match probe() {
        Ok(devices) => {
            assert!(!devices.is_empty(), "Ok(..) must carry at least one device");
            for (i, d) in devices.iter().enumerate() {
                println!("{d:?}");
                println!("{d}");
                assert_eq!(d.index, i);
                assert!(!d.name.is_empty());
                assert!(d.api_version >= (1, 0, 0));
                if d.api_version >= (1, 1, 0) {
                    assert!(d.subgroup_size.is_power_of_two(), "{d:?}");
                }
            }
        }
        Err(e @ VulkanError::Unavailable { .. }) => println!("skipped: {e}"),
        Err(e) => panic!("Vulkan present but probing failed: {e}"),
    }
}

#[test]
fn describe_agrees_with_probe() {
    match (probe(), describe()) {
        (Ok(devices), Ok(line)) => {
            println!("{line}");
            assert!(line.starts_with(&devices[0].name));
            assert!(!line.contains('\n'));
        }
        (Err(a), Err(b)) => {
            println!("skipped: {b}");
            assert_eq!(a.to_string(), b.to_string());
        }
        (a, b) => panic!("probe and describe disagree: {a:?} vs {b:?}"),
    }
}
