// Shared by the compute shaders. The workgroup size is specialization constant 0 (the host picks a power
// of two the device runs, see Device::workgroup); reductions go through shared memory in a tree, so no
// shader depends on the subgroup width (8 on lavapipe, 32 on NVIDIA, 64 on AMD).
layout(local_size_x_id = 0, local_size_y = 1, local_size_z = 1) in;
layout(constant_id = 0) const uint WG = 64;

// A flat index over a 2D grid of workgroups: one dimension holds at most 65535 of them on some devices.
uint flat_group() { return gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x; }
