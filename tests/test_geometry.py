import pytest

from fastunet import geometry


def test_paper_geometry():
    assert geometry.output_size(572, 4) == 388
    assert geometry.context(4) == 92
    assert geometry.output_size(1052, 4) == 868
    assert 572 in geometry.valid_input_sizes(4) and 1052 in geometry.valid_input_sizes(4)


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4, 5])
def test_valid_list_matches_layer_by_layer_trace(depth):
    sizes = geometry.valid_input_sizes(depth, max_size=700)
    brute = [s for s in range(1, 701) if geometry.is_valid_size(s, depth)]
    assert sizes == brute
    for s in sizes:
        assert s - geometry.output_size(s, depth) == 2 * geometry.context(depth)


def test_every_pool_sees_an_even_size():
    for s in geometry.valid_input_sizes(4, max_size=1200):
        size = s
        for _ in range(4):
            size -= 4
            assert size % 2 == 0
            size //= 2


def test_invalid_size_names_nearest_valid():
    with pytest.raises(ValueError, match=r"got 570\. Nearest valid: 556, 572"):
        geometry.check_tile_size(570, 4)
    with pytest.raises(ValueError, match=r"Nearest valid: 188"):
        geometry.check_tile_size(100, 4)
    with pytest.raises(ValueError, match="Nearest valid"):
        geometry.output_size(0, 4)
    with pytest.raises(TypeError):
        geometry.check_tile_size(572.0, 4)
    assert geometry.nearest_valid_sizes(573, 4) == (572, 588)
    assert geometry.nearest_valid_sizes(572, 4) == (572, 572)


def test_input_size_for_output():
    assert geometry.input_size_for_output(388, 4) == 572
    assert geometry.input_size_for_output(389, 4) == 588
    assert geometry.input_size_for_output(1, 4) == 188
