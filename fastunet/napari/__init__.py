"""The napari plugin (``pip install "fastunet[napari]"``; npe2 manifest ``napari.yaml``).

* :class:`~fastunet.napari.widgets.SegmentWidget` (Plugins > fastunet > Segment): segments the
  chosen image layer with the bundled model or a model file, in a worker thread with a
  progress bar, into a Labels layer with the image's scale;
* :class:`~fastunet.napari.widgets.TrainWidget` (Plugins > fastunet > Train): trains a model on
  an image layer and a labels layer of its objects;
* :func:`~fastunet.napari.reader.get_reader`: opens a fastunet output (zarr, OME-Zarr or TIFF)
  as its input image with the labels on top, at the input's pixel size.

The Qt-free parts (:mod:`~fastunet.napari.jobs`, :mod:`~fastunet.napari.reader`) import
neither napari nor Qt; :mod:`~fastunet.napari.widgets` needs napari and a Qt binding.
"""
