//! Cooperative-matrix detection (`VK_KHR_cooperative_matrix`: extension, feature bit, listed
//! shapes, and the features its shaders need) and the choice between the cooperative-matrix and
//! the portable shader path.

use ash::vk;

/// Environment variable: `1` forces the portable shader path even where the device has
/// cooperative matrices, so both paths can be compared on one GPU.
pub const PORTABLE_ENV: &str = "FFTCONV_VULKAN_PORTABLE";

/// The square tile sizes T the cooperative-matrix shaders are built for (`T x T x T`, f16 A and
/// B, f32 accumulator and result, subgroup scope), in order of preference: NVIDIA lists 16,
/// lavapipe (Mesa 25.1 and later) 8.
pub const COOPERATIVE_TILES: [u32; 2] = [16, 8];

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
    /// What else the shaders need: `shaderFloat16` (f16 staging in shared memory),
    /// `vulkanMemoryModel` with `vulkanMemoryModelDeviceScope` (the cooperative-matrix
    /// instructions use the model; the validation layer reports the barriers glslang emits for
    /// `memoryBarrierShared` as device scope), and subgroup arithmetic in compute shaders (a
    /// tile's largest magnitude); all through Vulkan 1.2.
    pub shader_float16: bool,
    pub vulkan_memory_model: bool,
    pub subgroup_arithmetic: bool,
    /// `cooperativeMatrixSupportedStages` includes compute shaders.
    pub compute_stage: bool,
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
    /// Queries the device (never assumes a shape). `api` is the Vulkan version the instance
    /// and device both support; the Vulkan 1.2 features are read only from 1.2 on.
    pub(crate) fn query(
        entry: &ash::Entry,
        instance: &ash::Instance,
        pdev: vk::PhysicalDevice,
        extension: bool,
        api: u32,
    ) -> Self {
        let mut subgroup = vk::PhysicalDeviceSubgroupProperties::default();
        let mut props2 = vk::PhysicalDeviceProperties2::default().push_next(&mut subgroup);
        // SAFETY: core 1.1 query (the caller checked 1.1); the chain outlives the call.
        unsafe { instance.get_physical_device_properties2(pdev, &mut props2) };
        let subgroup_arithmetic = subgroup
            .supported_operations
            .contains(vk::SubgroupFeatureFlags::ARITHMETIC)
            && subgroup
                .supported_stages
                .contains(vk::ShaderStageFlags::COMPUTE);
        if !extension {
            return Self {
                subgroup_arithmetic,
                ..Self::default()
            };
        }
        let mut coop_props = vk::PhysicalDeviceCooperativeMatrixPropertiesKHR::default();
        let mut props2 = vk::PhysicalDeviceProperties2::default().push_next(&mut coop_props);
        // SAFETY: the device lists the extension, so the chained structure is valid for it.
        unsafe { instance.get_physical_device_properties2(pdev, &mut props2) };
        let compute_stage = coop_props
            .cooperative_matrix_supported_stages
            .contains(vk::ShaderStageFlags::COMPUTE);
        let mut coop = vk::PhysicalDeviceCooperativeMatrixFeaturesKHR::default();
        let mut float16 = vk::PhysicalDeviceShaderFloat16Int8Features::default();
        let mut memory_model = vk::PhysicalDeviceVulkanMemoryModelFeatures::default();
        let mut features2 = vk::PhysicalDeviceFeatures2::default().push_next(&mut coop);
        if api >= vk::API_VERSION_1_2 {
            features2 = features2
                .push_next(&mut float16)
                .push_next(&mut memory_model);
        }
        // SAFETY: the device lists the extension and supports 1.2 where those are chained.
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
            shader_float16: float16.shader_float16 == vk::TRUE,
            vulkan_memory_model: memory_model.vulkan_memory_model == vk::TRUE
                && memory_model.vulkan_memory_model_device_scope == vk::TRUE,
            subgroup_arithmetic,
            compute_stage,
        }
    }

    /// Whether `t x t x t` with A/B of `ab`, accumulator and result f32, is listed with
    /// subgroup scope.
    pub fn has(&self, t: u32, ab: vk::ComponentTypeKHR) -> bool {
        self.shapes.iter().any(|s| {
            (s.m, s.n, s.k) == (t, t, t)
                && s.ab == ab
                && s.c == vk::ComponentTypeKHR::FLOAT32
                && s.result == vk::ComponentTypeKHR::FLOAT32
        })
    }

    /// Whether a `t x t` f16 accumulator is listed (the shaders declare one: the experiment
    /// that stores products in f16 converts to it, and every matrix type a module declares
    /// must match a listed shape).
    pub fn has_f16_accumulator(&self, t: u32) -> bool {
        self.shapes.iter().any(|s| {
            (s.m, s.n) == (t, t)
                && (s.c == vk::ComponentTypeKHR::FLOAT16
                    || s.result == vk::ComponentTypeKHR::FLOAT16)
        })
    }

    /// The preferred tile of [`COOPERATIVE_TILES`] listed for f16 operands with f32 and f16
    /// accumulators, if any.
    pub fn f16_tile(&self) -> Option<u32> {
        COOPERATIVE_TILES
            .into_iter()
            .find(|&t| self.has(t, vk::ComponentTypeKHR::FLOAT16) && self.has_f16_accumulator(t))
    }

    pub fn has_f16(&self) -> bool {
        self.f16_tile().is_some()
    }

    pub fn has_bf16(&self) -> bool {
        COOPERATIVE_TILES
            .into_iter()
            .any(|t| self.has(t, COMPONENT_TYPE_BFLOAT16))
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
    /// FFT rounds as `tile x tile x tile` f16 matrix products through
    /// `VK_KHR_cooperative_matrix`, for f16 and bf16 I/O (f32 I/O keeps the portable path's f32
    /// rounds: f16 operands cannot give f32 accuracy).
    CooperativeMatrix {
        /// T of the `T x T x T` shape used.
        tile: u32,
    },
}

impl ShaderPath {
    pub fn name(&self) -> &'static str {
        match self {
            ShaderPath::Portable { .. } => "portable",
            ShaderPath::CooperativeMatrix { .. } => "cooperative-matrix",
        }
    }

    /// Why this path was chosen.
    pub fn reason(&self) -> String {
        match self {
            ShaderPath::Portable { reason } => reason.clone(),
            ShaderPath::CooperativeMatrix { tile } => format!(
                "VK_KHR_cooperative_matrix lists {tile}x{tile}x{tile} f16 -> f32; f32 I/O keeps f32 rounds"
            ),
        }
    }

    pub fn is_cooperative(&self) -> bool {
        matches!(self, ShaderPath::CooperativeMatrix { .. })
    }

    /// The cooperative-matrix tile, if this is that path.
    pub fn cooperative_tile(&self) -> Option<u32> {
        match self {
            ShaderPath::CooperativeMatrix { tile } => Some(*tile),
            ShaderPath::Portable { .. } => None,
        }
    }
}

/// Chooses the path from what the device offers; `portable_env` is the value of
/// [`PORTABLE_ENV`] (`Some("1")` forces the portable path).
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
    if !support.compute_stage {
        return portable("cooperative matrices not supported in compute shaders");
    }
    let Some(tile) = support.f16_tile() else {
        return portable(
            "VK_KHR_cooperative_matrix lists neither 16x16x16 nor 8x8x8 f16 -> f32 and f16 \
             (subgroup scope)",
        );
    };
    if !support.shader_float16 {
        return portable("cooperative matrices without shaderFloat16 (Vulkan 1.2)");
    }
    if !support.vulkan_memory_model {
        return portable(
            "cooperative matrices without vulkanMemoryModel and its device scope (Vulkan 1.2)",
        );
    }
    if !support.subgroup_arithmetic {
        return portable("cooperative matrices without subgroup arithmetic in compute shaders");
    }
    ShaderPath::CooperativeMatrix { tile }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(t: u32, ab: vk::ComponentTypeKHR) -> CooperativeShape {
        CooperativeShape {
            m: t,
            n: t,
            k: t,
            ab,
            c: vk::ComponentTypeKHR::FLOAT32,
            result: vk::ComponentTypeKHR::FLOAT32,
        }
    }

    fn full(shapes: Vec<CooperativeShape>) -> CooperativeMatrixSupport {
        CooperativeMatrixSupport {
            extension: true,
            feature: true,
            shapes,
            shader_float16: true,
            vulkan_memory_model: true,
            subgroup_arithmetic: true,
            compute_stage: true,
        }
    }

    /// `shape(t, f16)` and its f16-accumulator twin (NVIDIA and lavapipe list both).
    fn f16_pair(t: u32) -> [CooperativeShape; 2] {
        let f32_acc = shape(t, vk::ComponentTypeKHR::FLOAT16);
        [
            f32_acc,
            CooperativeShape {
                c: vk::ComponentTypeKHR::FLOAT16,
                result: vk::ComponentTypeKHR::FLOAT16,
                ..f32_acc
            },
        ]
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
        let full = full(f16_pair(16).to_vec());
        assert!(!select_shader_path(
            &CooperativeMatrixSupport {
                shapes: vec![shape(16, vk::ComponentTypeKHR::FLOAT16)],
                ..full.clone()
            },
            None
        )
        .is_cooperative());
        assert_eq!(
            select_shader_path(&full, None),
            ShaderPath::CooperativeMatrix { tile: 16 }
        );
        let forced = select_shader_path(&full, Some("1".into()));
        assert!(forced.reason().contains("FFTCONV_VULKAN_PORTABLE"));
        let no_feature = CooperativeMatrixSupport {
            feature: false,
            ..full.clone()
        };
        assert!(select_shader_path(&no_feature, None)
            .reason()
            .contains("feature"));
        for (missing, word) in [
            (
                CooperativeMatrixSupport {
                    shader_float16: false,
                    ..full.clone()
                },
                "shaderFloat16",
            ),
            (
                CooperativeMatrixSupport {
                    vulkan_memory_model: false,
                    ..full.clone()
                },
                "vulkanMemoryModel",
            ),
            (
                CooperativeMatrixSupport {
                    subgroup_arithmetic: false,
                    ..full.clone()
                },
                "arithmetic",
            ),
            (
                CooperativeMatrixSupport {
                    compute_stage: false,
                    ..full.clone()
                },
                "compute shaders",
            ),
        ] {
            let path = select_shader_path(&missing, None);
            assert!(
                !path.is_cooperative() && path.reason().contains(word),
                "{path:?}"
            );
        }
    }

    #[test]
    fn shapes_are_matched_exactly_and_16_is_preferred() {
        let mut s = full(vec![CooperativeShape {
            m: 16,
            n: 8,
            k: 16,
            ..shape(16, vk::ComponentTypeKHR::FLOAT16)
        }]);
        assert!(!s.has_f16());
        assert!(select_shader_path(&s, None)
            .reason()
            .contains("lists neither"));
        s.shapes.push(shape(16, COMPONENT_TYPE_BFLOAT16));
        assert!(s.has_bf16() && !s.has_f16());
        // lavapipe lists 8x8x8 f16 -> f16 (alone, no f16 -> f32: not enough) and f16 -> f32.
        s.shapes.push(CooperativeShape {
            c: vk::ComponentTypeKHR::FLOAT16,
            result: vk::ComponentTypeKHR::FLOAT16,
            ..shape(8, vk::ComponentTypeKHR::FLOAT16)
        });
        assert!(!s.has_f16());
        s.shapes.push(shape(8, vk::ComponentTypeKHR::FLOAT16));
        assert_eq!(s.f16_tile(), Some(8));
        assert_eq!(select_shader_path(&s, None).cooperative_tile(), Some(8));
        // 16x16x16 f16 -> f32 alone: no f16 accumulator of that size, so still 8.
        s.shapes.push(shape(16, vk::ComponentTypeKHR::FLOAT16));
        assert_eq!(s.f16_tile(), Some(8));
        s.shapes.extend(f16_pair(16));
        assert_eq!(s.f16_tile(), Some(16));
        assert_eq!(
            select_shader_path(&s, None),
            ShaderPath::CooperativeMatrix { tile: 16 }
        );
    }
}
