import numpy as np
from npe2 import PluginManager

from napari_vosembed.sample import write_sample_sequence


def test_manifest_is_valid_and_registered():
    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-vosembed")
    assert {s.key for s in manifest.contributions.sample_data} == {"horse-gallop"}


def test_sample_data_opens_image_and_ground_truth(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-vosembed", "horse-gallop")
    image, labels = viewer.layers
    assert image.rgb and image.data.shape == (24, 240, 320, 3)
    assert labels.data.shape == (24, 240, 320) and labels.data.max() == 1


def test_reader_opens_a_sequence_folder_lazily(make_napari_viewer, tmp_path):
    seq = write_sample_sequence(tmp_path)
    viewer = make_napari_viewer()
    viewer.open(str(seq), plugin="napari-vosembed")
    image, labels = viewer.layers
    assert image.data.shape == (24, 240, 320, 3) and not isinstance(image.data, np.ndarray)
    assert np.asarray(labels.data[3]).sum() > 0
