import pytest


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_thread):  # tests/conftest.py's one_thread for every mining test module
    yield


TINY_SAM = {  # a random SamConfig small enough for CPU tests: 64 px input, 8x8 embeddings
    "vision_config": {"hidden_size": 32, "output_channels": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                      "image_size": 64, "patch_size": 8, "window_size": 4, "global_attn_indexes": [1],
                      "num_pos_feats": 8, "mlp_dim": 32},
    "prompt_encoder_config": {"hidden_size": 16, "image_size": 64, "patch_size": 8, "mask_input_channels": 4},
    "mask_decoder_config": {"hidden_size": 16, "mlp_dim": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                            "iou_head_hidden_dim": 16},
}


@pytest.fixture(scope="session")
def tiny_sam_config():
    import copy

    return copy.deepcopy(TINY_SAM)
