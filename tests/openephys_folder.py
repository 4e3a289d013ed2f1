"""Write a tiny Open Ephys binary recording (GUI >= 0.6 layout) for tests.

    <root>/Record Node 101/settings.xml                     INFO/DATE, INFO/VERSION
    <root>/Record Node 101/experiment1/recording1/structure.oebin        JSON: continuous streams
    .../recording1/continuous/<stream>/continuous.dat       int16, samples x channels, interleaved
    .../recording1/continuous/<stream>/sample_numbers.npy   int64 sample number of every sample
    .../recording1/continuous/<stream>/timestamps.npy       float64 seconds (synchronised)

The acquisition clock is ``sample_number / sample_rate``, the clock itloop's day files use.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np

STREAM = "Acquisition_Board-100.Rhythm Data"


def write_openephys_binary(root: Path, data_uv: np.ndarray, sample_rate: float, first_sample: int,
                           channel_names: list[str], start: dt.datetime, bit_volts: float = 0.195) -> Path:
    """Write ``data_uv`` (samples x channels, microvolts) as one Open Ephys binary recording whose
    first sample is sample number ``first_sample``; returns the folder to give the readers."""
    node = Path(root) / "Record Node 101"
    cont = node / "experiment1" / "recording1" / "continuous" / STREAM
    cont.mkdir(parents=True)
    n = data_uv.shape[0]
    np.round(data_uv / bit_volts).astype("<i2").tofile(cont / "continuous.dat")
    numbers = np.arange(first_sample, first_sample + n, dtype=np.int64)
    np.save(cont / "sample_numbers.npy", numbers)
    np.save(cont / "timestamps.npy", numbers / sample_rate)
    oebin = {"GUI version": "0.6.7", "continuous": [{
        "folder_name": f"{STREAM}/", "sample_rate": float(sample_rate), "source_processor_name": "Acquisition Board",
        "source_processor_id": 100, "stream_name": "Rhythm Data", "recorded_processor": "Record Node",
        "recorded_processor_id": 101, "num_channels": len(channel_names),
        "channels": [{"channel_name": c, "description": "headstage data channel", "identifier": "genericdata.continuous",
                      "history": "Acquisition Board -> Record Node", "bit_volts": bit_volts, "units": "uV",
                      "source_processor_index": i, "recorded_processor_index": i}
                     for i, c in enumerate(channel_names)]}], "events": [], "spikes": []}
    (node / "experiment1" / "recording1" / "structure.oebin").write_text(json.dumps(oebin, indent=2))
    (node / "settings.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<SETTINGS>\n  <INFO>\n    <VERSION>0.6.7</VERSION>\n'
        f'    <DATE>{start.strftime("%d %b %Y %H:%M:%S")}</DATE>\n    <OS>Linux</OS>\n    <MACHINE>rig</MACHINE>\n'
        '  </INFO>\n  <SIGNALCHAIN/>\n</SETTINGS>\n')
    return Path(root)
