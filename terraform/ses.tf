# The sender of the product-change emails. Creating the identity makes SES email a
# verification link to the address; SES sends from it only once the link is clicked. A new
# account is in the SES sandbox (it may only send to verified addresses) until AWS grants
# production access.
resource "aws_ses_email_identity" "sender" {
  email = var.email_source
}
