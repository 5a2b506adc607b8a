def test_dbg(clip):
    w = clip.widget
    p = w.add_points_layer()
    print("mode", repr(p.mode), p.mode == "add", clip.viewer.layers.selection.active is p)
