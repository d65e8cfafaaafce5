# The sender of the product-change emails: SES's identity for the domain of email_source,
# signed with Easy DKIM (2048-bit keys SES rotates), every email sent through a
# configuration set (the identity's default: the app names none) that keeps SES's
# reputation metrics and suppresses addresses that bounced or complained.
#
# SES sends from the domain once its three DKIM CNAME records are published (output
# ses_dkim_records; put them in the domain's DNS). A new account is in the SES sandbox
# (it may only send to verified addresses) until AWS grants production access.

locals {
  email_domain = lower(split("@", var.email_source)[1])
}

resource "aws_sesv2_configuration_set" "email" {
  configuration_set_name = "${local.prefix}-email"

  reputation_options {
    reputation_metrics_enabled = true
  }

  sending_options {
    sending_enabled = true
  }

  suppression_options {
    suppressed_reasons = ["BOUNCE", "COMPLAINT"]
  }

  delivery_options {
    tls_policy = "REQUIRE"
  }
}

resource "aws_sesv2_email_identity" "domain" {
  email_identity         = local.email_domain
  configuration_set_name = aws_sesv2_configuration_set.email.configuration_set_name

  dkim_signing_attributes {
    next_signing_key_length = "RSA_2048_BIT"
  }
}
