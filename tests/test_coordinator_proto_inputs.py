"""What a proto-dimension accepts: ids are ints (checked like a reader's), keywords a list of strings."""

from __future__ import annotations

import numpy as np
import pytest

from shmpool import InvalidLayer


def test_proto_dimension_ids_are_checked_like_reader_ids(coord):
    for bad in (True, 2.0, np.bool_(False)):
        with pytest.raises(TypeError, match="dimension_id"):
            coord.create_proto_dimension(bad, "x")
        with pytest.raises(TypeError, match="dimension_id"):
            coord.load_layer_context(bad, 1)
        with pytest.raises(TypeError, match="dimension_id"):
            coord.proto(bad)
    proto = coord.create_proto_dimension(np.int64(901), "ids")
    assert type(proto.dimension_id) is int and coord.proto(901) is proto
    proto.add_layer(np.int32(1), "one")
    for bad in (True, 1.0):
        with pytest.raises(TypeError, match="layer_id"):
            proto.add_layer(bad, "bad")
        with pytest.raises(TypeError, match="layer_id"):
            proto.load_layer_context(bad)
        with pytest.raises(TypeError, match="layer_id"):
            proto.remove_layer(bad)
    assert proto.layer_ids() == [1] and type(proto.layer_ids()[0]) is int
    assert coord.load_layer_context(901, np.int64(1)).text == "one"


def test_a_keywords_str_is_an_invalid_layer_not_one_keyword_per_character(coord):
    proto = coord.create_proto_dimension(902, "kw")
    for keywords in ("abc", b"abc"):
        with pytest.raises(InvalidLayer) as err:
            proto.add_layer(5, "text", keywords=keywords)
        e = err.value
        assert (e.dimension_id, e.layer_id) == (902, 5)
        assert "keywords must be a list of strings" in str(e) and "dimension 902" in str(e)
    assert len(proto) == 0
    proto.add_layer(5, "text", keywords=(k for k in ["river", "stone"]))  # any iterable of str
    assert proto.load_layer_context(5).keywords == ("river", "stone")
    builder = proto.builder
    with pytest.raises(InvalidLayer, match="keywords must be a list of strings"):
        builder.add_layer(6, "text", keywords="abc")
