// copy.comp: a compute-shader copy between two storage buffers, 16 bytes per element, for the
// memory floor (bandwidth.rs): on NVIDIA, vkCmdCopyBuffer runs on a copy engine at a fraction of
// the memory bandwidth the FFT passes can reach, so the floor takes the faster of the two.
//
// Bindings and push constants follow fftconv.comp's pipeline layout (the host reuses it): the
// source at binding 0 (u), the destination at binding 3 (y); the first push-constant word is
// the number of 16-byte elements. Any workgroup count: a grid-stride loop covers the rest.
#version 450

layout(local_size_x_id = 0) in;

layout(std430, set = 0, binding = 0) readonly buffer Source { uvec4 src[]; };
layout(std430, set = 0, binding = 3) writeonly buffer Destination { uvec4 dst[]; };

layout(push_constant) uniform Params {
    uint count; // 16-byte elements to copy
};

void main() {
    uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    for (uint i = gl_GlobalInvocationID.x; i < count; i += stride) {
        dst[i] = src[i];
    }
}
