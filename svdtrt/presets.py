"""Built-in SVD-architecture models, as configs (data), built with seeded random weights.

``tiny`` is the demo and test model; ``small`` differs from it in depth, widths, frame
count and aspect ratio, so that nothing passes by accident of one configuration. ``mid``
is the benchmark model: large enough that the components' compute, not Python and
framework overhead, dominates a clip, yet a clip runs in seconds on a 2-core CPU.
The scheduler and feature-extractor configs are those of the released SVD checkpoints
(``stabilityai/stable-video-diffusion-img2vid{,-xt}``: ``scheduler/scheduler_config.json``,
``feature_extractor/preprocessor_config.json``).
"""

from __future__ import annotations

#: EulerDiscreteScheduler settings of the released SVD checkpoints.
SVD_SCHEDULER = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "trained_betas": None,
    "use_karras_sigmas": True,
}

#: CLIPImageProcessor settings of the released SVD checkpoints (OpenAI CLIP normalisation).
SVD_FEATURE_EXTRACTOR = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}

PRESETS: dict[str, dict] = {
    "tiny": {
        "description": "2-level UNet, 32/64 channels, 4 frames at 64x64 (the demo model)",
        "seed": 0,
        "frames": 4, "height": 64, "width": 64,
        "unet": {
            "sample_size": 16, "in_channels": 8, "out_channels": 4,
            "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
            "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
            "block_out_channels": [32, 64], "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 24, "layers_per_block": 1,
            "cross_attention_dim": 32, "num_attention_heads": [2, 4], "num_frames": 4,
        },
        "vae": {
            "in_channels": 3, "out_channels": 3, "latent_channels": 4,
            "down_block_types": ["DownEncoderBlock2D"] * 3, "block_out_channels": [32, 32, 64],
            "layers_per_block": 1, "sample_size": 64, "scaling_factor": 0.18215,
        },
        "image_encoder": {
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "image_size": 224, "patch_size": 32, "projection_dim": 32,
        },
    },
    "small": {
        "description": "3-level UNet, 32/64/96 channels, 2 layers per block, 6 frames at 64x96",
        "seed": 1,
        "frames": 6, "height": 64, "width": 96,
        "unet": {
            "sample_size": 16, "in_channels": 8, "out_channels": 4,
            "down_block_types": [
                "CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal",
            ],
            "up_block_types": [
                "UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal",
            ],
            "block_out_channels": [32, 64, 96], "addition_time_embed_dim": 16,
            "projection_class_embeddings_input_dim": 48, "layers_per_block": 2,
            "cross_attention_dim": 48, "num_attention_heads": [2, 4, 6], "num_frames": 6,
        },
        "vae": {
            "in_channels": 3, "out_channels": 3, "latent_channels": 4,
            "down_block_types": ["DownEncoderBlock2D"] * 3, "block_out_channels": [32, 64, 64],
            "layers_per_block": 2, "sample_size": 64, "scaling_factor": 0.18215,
        },
        "image_encoder": {
            "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 3,
            "num_attention_heads": 4, "image_size": 224, "patch_size": 28, "projection_dim": 48,
        },
    },
    "mid": {
        "description": "3-level UNet, 64/128/192 channels, 2 layers per block, 8 frames at 64x96 "
                       "(benchmarks: compute dominates, a clip takes seconds on a 2-core CPU)",
        "seed": 2,
        "frames": 8, "height": 64, "width": 96,
        "unet": {
            "sample_size": 16, "in_channels": 8, "out_channels": 4,
            "down_block_types": [
                "CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal",
            ],
            "up_block_types": [
                "UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal",
            ],
            "block_out_channels": [64, 128, 192], "addition_time_embed_dim": 32,
            "projection_class_embeddings_input_dim": 96, "layers_per_block": 2,
            "cross_attention_dim": 128, "num_attention_heads": [2, 4, 6], "num_frames": 8,
        },
        "vae": {
            "in_channels": 3, "out_channels": 3, "latent_channels": 4,
            "down_block_types": ["DownEncoderBlock2D"] * 3, "block_out_channels": [32, 64, 128],
            "layers_per_block": 2, "sample_size": 64, "scaling_factor": 0.18215,
        },
        "image_encoder": {
            "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
            "num_attention_heads": 4, "image_size": 224, "patch_size": 16, "projection_dim": 128,
        },
    },
}
