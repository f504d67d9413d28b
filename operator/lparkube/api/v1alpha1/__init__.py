"""lparkube.io/v1alpha1: the kinds this release serves."""

from lparkube.api.resource import CustomResource
from lparkube.api.v1alpha1.conditionprofile import CONDITION_PROFILE
from lparkube.api.v1alpha1.hibernationimage import HIBERNATION_IMAGE
from lparkube.api.v1alpha1.partition import PARTITION
from lparkube.api.v1alpha1.remoterestart import REMOTE_RESTART
from lparkube.api.v1alpha1.saveevent import SAVE_EVENT
from lparkube.api.v1alpha1.vioscluster import VIOS_CLUSTER

KINDS: tuple[CustomResource, ...] = (
    PARTITION,
    SAVE_EVENT,
    CONDITION_PROFILE,
    VIOS_CLUSTER,
    HIBERNATION_IMAGE,
    REMOTE_RESTART,
)
