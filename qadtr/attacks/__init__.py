"""Adversarial patch attacks: one function per attack over a `torch.nn.Module`, each returning a `Patch`.

    universal_patch  Brown et al. 2017: one patch for all images, EOT placements
    lavan_patch      Karmon et al. 2018: small patch at a fixed location
    location_patch   Rao et al. 2020: per-image patch with greedy location search
    aqapa_patch      A-QAPA: one patch across the bit widths of a switchable model

Attack a quantized model through `deploy_net(model, w, a)`, the network the integer runtimes compute.

Example:
    >>> from qadtr.attacks import UniversalConfig, universal_patch, save_patch, evaluate_patch
    >>> net = deploy_net(model, 8)
    >>> patch = universal_patch(net, train.images, train.labels, cfg=UniversalConfig(size=0.1, target=3))
    >>> print(evaluate_patch(net, patch, test.images, labels=test.labels))
"""

from qadtr.attacks._place import EOTConfig, Placement, apply_patch, index_map, patch_side, rebuild, sample_placements
from qadtr.attacks._registry import ATTACK_ROWS, ATTACKS, AttackInfo, attack_for_config
from qadtr.attacks.aqapa import AqapaConfig, aqapa_patch
from qadtr.attacks.asr import ASR, attack_success, eval_placements, evaluate_patch, parse_target
from qadtr.attacks.lavan import LavanConfig, lavan_patch
from qadtr.attacks.location import LocationConfig, location_patch
from qadtr.attacks.patchfile import FORMAT_VERSION, Patch, load_patch, patch_name, save_patch
from qadtr.attacks.universal import UniversalConfig, universal_patch

for _row in (AttackInfo("universal", UniversalConfig, universal_patch, "Brown et al. 2017, EOT placements"),
             AttackInfo("lavan", LavanConfig, lavan_patch, "Karmon et al. 2018, one fixed location"),
             AttackInfo("location", LocationConfig, location_patch, "Rao et al. 2020, per image, location search"),
             AttackInfo("aqapa", AqapaConfig, aqapa_patch, "A-QAPA, one patch across bit widths")):
    ATTACK_ROWS.register(_row)

__all__ = ["ASR", "ATTACKS", "ATTACK_ROWS", "AqapaConfig", "AttackInfo", "EOTConfig", "FORMAT_VERSION", "LavanConfig",
           "LocationConfig", "Patch", "Placement", "UniversalConfig", "apply_patch", "aqapa_patch", "attack_for_config",
           "attack_success", "eval_placements", "evaluate_patch", "index_map", "lavan_patch", "load_patch",
           "location_patch", "parse_target", "patch_name", "patch_side", "rebuild", "sample_placements", "save_patch",
           "universal_patch"]
