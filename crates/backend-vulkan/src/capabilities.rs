//! Cooperative-matrix detection (`VK_KHR_cooperative_matrix`: extension, feature bit, listed
//! shapes) and the choice between the cooperative-matrix and the portable shader path.

use ash::vk;

/// Environment variable: `1` forces the portable shader path even where the device has
/// cooperative matrices, so both paths can be compared on one GPU.
pub const PORTABLE_ENV: &str = "FFTCONV_VULKAN_PORTABLE";

/// The cooperative-matrix shape the tensor-core path uses: `M x N x K = 16 x 16 x 16`,
/// subgroup scope, f32 accumulator and result.
pub const COOPERATIVE_SHAPE: (u32, u32, u32) = (16, 16, 16);

/// `VK_COMPONENT_TYPE_BFLOAT16_KHR` (VK_KHR_shader_bfloat16; newer than this `ash`).
const COMPONENT_TYPE_BFLOAT16: vk::ComponentTypeKHR = vk::ComponentTypeKHR::from_raw(1_000_141_000);

/// What a device offers for cooperative matrices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CooperativeMatrixSupport {
    /// The device lists `VK_KHR_cooperative_matrix`.
    pub extension: bool,
    /// Its `cooperativeMatrix` feature bit is on.
    pub feature: bool,
    /// The listed shapes `(M, N, K, A/B type, C/result type)` with subgroup scope.
    pub shapes: Vec<CooperativeShape>,
}

/// One shape from `vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CooperativeShape {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub ab: vk::ComponentTypeKHR,
    pub c: vk::ComponentTypeKHR,
    pub result: vk::ComponentTypeKHR,
}

impl CooperativeMatrixSupport {
    /// Queries the device (never assumes a shape).
    pub(crate) fn query(
        entry: &ash::Entry,
        instance: &ash::Instance,
        pdev: vk::PhysicalDevice,
        extension: bool,
    ) -> Self {
        if !extension {
            return Self::default();
        }
        let mut coop = vk::PhysicalDeviceCooperativeMatrixFeaturesKHR::default();
        let mut features2 = vk::PhysicalDeviceFeatures2::default().push_next(&mut coop);
        // SAFETY: the device lists the extension, so the chained structure is valid for it.
        unsafe { instance.get_physical_device_features2(pdev, &mut features2) };
        let feature = coop.cooperative_matrix == vk::TRUE;
        let loader = ash::khr::cooperative_matrix::Instance::new(entry, instance);
        // SAFETY: the device lists the extension; the entry point comes from the live instance.
        let listed = unsafe { loader.get_physical_device_cooperative_matrix_properties(pdev) }
            .unwrap_or_default();
        let shapes = listed
            .iter()
            .filter(|p| p.scope == vk::ScopeKHR::SUBGROUP && p.a_type == p.b_type)
            .map(|p| CooperativeShape {
                m: p.m_size,
                n: p.n_size,
                k: p.k_size,
                ab: p.a_type,
                c: p.c_type,
                result: p.result_type,
            })
            .collect();
        CooperativeMatrixSupport {
            extension,
            feature,
            shapes,
        }
    }

    /// Whether `shape` (A/B of `ab`, accumulator and result f32) is listed with subgroup scope.
    pub fn has(&self, ab: vk::ComponentTypeKHR) -> bool {
        let (m, n, k) = COOPERATIVE_SHAPE;
        self.shapes.iter().any(|s| {
            (s.m, s.n, s.k) == (m, n, k)
                && s.ab == ab
                && s.c == vk::ComponentTypeKHR::FLOAT32
                && s.result == vk::ComponentTypeKHR::FLOAT32
        })
    }

    pub fn has_f16(&self) -> bool {
        self.has(vk::ComponentTypeKHR::FLOAT16)
    }

    pub fn has_bf16(&self) -> bool {
        self.has(COMPONENT_TYPE_BFLOAT16)
    }
}

/// The shader path a device's convolutions use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShaderPath {
    /// Scalar f32 FFTs in shared memory: runs on any Vulkan 1.1 device.
    Portable {
        /// Why the cooperative-matrix path is not used.
        reason: String,
    },
    /// Tensor-core matrix products through `VK_KHR_cooperative_matrix`.
    CooperativeMatrix,
}

impl ShaderPath {
    pub fn name(&self) -> &'static str {
        match self {
            ShaderPath::Portable { .. } => "portable",
            ShaderPath::CooperativeMatrix => "cooperative-matrix",
        }
    }

    /// Why this path was chosen.
    pub fn reason(&self) -> String {
        match self {
            ShaderPath::Portable { reason } => reason.clone(),
            ShaderPath::CooperativeMatrix => format!(
                "VK_KHR_cooperative_matrix lists {}x{}x{} f16",
                COOPERATIVE_SHAPE.0, COOPERATIVE_SHAPE.1, COOPERATIVE_SHAPE.2
            ),
        }
    }

    pub fn is_cooperative(&self) -> bool {
        matches!(self, ShaderPath::CooperativeMatrix)
    }
}

/// Chooses the path from what the device offers; `portable_env` is the value of
/// [`PORTABLE_ENV`] (`Some("1")` forces the portable path).
///
/// The cooperative-matrix shaders are not written yet (they need a GPU with the extension to be
/// developed and tested), so a device that offers everything still gets the portable path, with
/// a reason that says so.
pub fn select_shader_path(
    support: &CooperativeMatrixSupport,
    portable_env: Option<String>,
) -> ShaderPath {
    let portable = |reason: &str| ShaderPath::Portable {
        reason: reason.to_owned(),
    };
    if portable_env.as_deref() == Some("1") {
        return portable("forced by FFTCONV_VULKAN_PORTABLE=1");
    }
    if !support.extension {
        return portable("no VK_KHR_cooperative_matrix");
    }
    if !support.feature {
        return portable("cooperativeMatrix feature is off");
    }
    if !support.has_f16() {
        return portable(
            "VK_KHR_cooperative_matrix does not list 16x16x16 f16 -> f32 (subgroup scope)",
        );
    }
    portable("cooperative-matrix shaders not implemented yet")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(ab: vk::ComponentTypeKHR) -> CooperativeShape {
        CooperativeShape {
            m: 16,
            n: 16,
            k: 16,
            ab,
            c: vk::ComponentTypeKHR::FLOAT32,
            result: vk::ComponentTypeKHR::FLOAT32,
        }
    }

    #[test]
    fn portable_without_the_extension_or_when_forced() {
        let none = CooperativeMatrixSupport::default();
        assert_eq!(
            select_shader_path(&none, None),
            ShaderPath::Portable {
                reason: "no VK_KHR_cooperative_matrix".into()
            }
        );
        let full = CooperativeMatrixSupport {
            extension: true,
            feature: true,
            shapes: vec![shape(vk::ComponentTypeKHR::FLOAT16)],
        };
        let forced = select_shader_path(&full, Some("1".into()));
        assert!(forced.reason().contains("FFTCONV_VULKAN_PORTABLE"));
        let no_feature = CooperativeMatrixSupport {
            feature: false,
            ..full.clone()
        };
        assert!(select_shader_path(&no_feature, None)
            .reason()
            .contains("feature"));
    }

    #[test]
    fn shapes_are_matched_exactly() {
        let mut s = CooperativeMatrixSupport {
            extension: true,
            feature: true,
            shapes: vec![CooperativeShape {
                m: 16,
                n: 8,
                k: 16,
                ..shape(vk::ComponentTypeKHR::FLOAT16)
            }],
        };
        assert!(!s.has_f16());
        assert!(select_shader_path(&s, None)
            .reason()
            .contains("does not list"));
        s.shapes.push(shape(COMPONENT_TYPE_BFLOAT16));
        assert!(s.has_bf16() && !s.has_f16());
        s.shapes.push(shape(vk::ComponentTypeKHR::FLOAT16));
        assert!(s.has_f16());
    }
}
